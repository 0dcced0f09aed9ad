//! The `pg_catalog` look-ups of psql (`\dt`, `\d TABLE`, tab completion) and Grafana
//! (table and column lists), answered from the node's own `information_schema` (run
//! through the node's query path, so tokens see their tables only). These clients send
//! fixed statements written for PostgreSQL's catalog, which DataFusion has not; they are
//! recognised by their shape. Any other statement on `pg_catalog` gets an empty answer,
//! which psql takes as "none" for the footers of `\d` (indexes, policies, ...).

use std::collections::BTreeSet;

use datafusion::arrow::array::{Array, AsArray};
use query_actors::auth::Principal;
use query_actors::node::NodeHandle;

use super::encode::text_batch;
use super::error::PgError;
use super::Outcome;

/// A relation as the catalog shows it; its oid is its place in the sorted list.
struct Relation {
    oid: u32,
    schema: String,
    name: String,
    view: bool,
}

const FIRST_OID: u32 = 16384;

/// The answer to `sql` if it is one of the catalog look-ups; None: a statement for the
/// node.
pub async fn answer(
    node: &NodeHandle,
    who: &Principal,
    sql: &str,
) -> Result<Option<Outcome>, PgError> {
    let lower = sql.to_ascii_lowercase();
    if !is_lookup(&lower) {
        return Ok(None);
    }
    let grafana = lower.contains("current_setting('search_path')");
    if grafana && lower.contains("information_schema.tables") {
        let rows = relations(node, who)
            .await?
            .into_iter()
            .map(|r| vec![Some(qualified(&r))])
            .collect();
        return Ok(Some(Outcome::rows(text_batch(&["table"], rows))));
    }
    if grafana && lower.contains("information_schema.columns") {
        let table = between(sql, "parse_ident('", "'").unwrap_or_default();
        let (schema, name) = match table.split_once('.') {
            Some((s, n)) => (s.to_string(), n.to_string()),
            None => ("public".to_string(), table),
        };
        let rows = columns(node, who, &schema, &name)
            .await?
            .into_iter()
            .map(|(c, t)| vec![Some(c), Some(t)])
            .collect();
        return Ok(Some(Outcome::rows(text_batch(&["column", "type"], rows))));
    }
    // psql \dt, \dv, \d: the list of relations.
    if lower.contains("as \"schema\"")
        && lower.contains("as \"name\"")
        && lower.contains("pg_class c")
    {
        // The kinds asked for: `c.relkind IN ('r','p','v',...)`.
        let kinds = between(&lower, "c.relkind in (", ")").unwrap_or_default();
        let views = kinds.contains("'v'");
        let tables = kinds.contains("'r'");
        let rows = relations(node, who)
            .await?
            .into_iter()
            .filter(|r| if r.view { views } else { tables })
            .map(|r| {
                let kind = if r.view { "view" } else { "table" };
                vec![
                    Some(r.schema),
                    Some(r.name),
                    Some(kind.into()),
                    Some("query".into()),
                ]
            })
            .collect();
        return Ok(Some(Outcome::rows(text_batch(
            &["Schema", "Name", "Type", "Owner"],
            rows,
        ))));
    }
    // psql \d NAME, step 1: the relations of that name.
    if lower.contains("c.relname operator(pg_catalog.~)") {
        let name = pattern(sql, "c.relname OPERATOR(pg_catalog.~) '");
        let schema = pattern(sql, "n.nspname OPERATOR(pg_catalog.~) '");
        let rows = relations(node, who)
            .await?
            .into_iter()
            .filter(|r| {
                // Without a schema, what the search path sees: public.
                name.as_deref().is_none_or(|n| n == r.name)
                    && schema.as_deref().unwrap_or("public") == r.schema
            })
            .map(|r| vec![Some(r.oid.to_string()), Some(r.schema), Some(r.name)])
            .collect();
        return Ok(Some(Outcome::rows(text_batch(
            &["oid", "nspname", "relname"],
            rows,
        ))));
    }
    // psql \dn: the schemas.
    if lower.contains("from pg_catalog.pg_namespace n") && lower.contains("as \"name\"") {
        let mut schemas: Vec<String> = relations(node, who)
            .await?
            .into_iter()
            .map(|r| r.schema)
            .collect();
        schemas.dedup();
        let rows = schemas
            .into_iter()
            .map(|s| vec![Some(s), Some("query".into())])
            .collect();
        return Ok(Some(Outcome::rows(text_batch(&["Name", "Owner"], rows))));
    }
    // Step 2: the relation's properties (psql 15's columns, in its order).
    if lower.contains("c.relchecks") {
        let Some(r) = by_oid(node, who, sql, "c.oid = '").await? else {
            return Ok(Some(Outcome::rows(text_batch(&["relchecks"], vec![]))));
        };
        let kind = if r.view { "v" } else { "r" };
        let cols = [
            "relchecks",
            "relkind",
            "relhasindex",
            "relhasrules",
            "relhastriggers",
            "relrowsecurity",
            "relforcerowsecurity",
            "relhasoids",
            "relispartition",
            "reloptions",
            "reltablespace",
            "reloftype",
            "relpersistence",
            "relreplident",
            "amname",
        ];
        let vals = [
            "0", kind, "f", "f", "f", "f", "f", "f", "f", "", "0", "", "p", "d", "heap",
        ];
        let row = vals.iter().map(|v| Some(v.to_string())).collect();
        return Ok(Some(Outcome::rows(text_batch(&cols, vec![row]))));
    }
    // Step 3: its columns.
    if lower.contains("from pg_catalog.pg_attribute a") && lower.contains("a.attrelid = '") {
        let Some(r) = by_oid(node, who, sql, "a.attrelid = '").await? else {
            return Ok(Some(Outcome::rows(text_batch(&["attname"], vec![]))));
        };
        let mut cols = vec![
            "attname",
            "format_type",
            "default",
            "attnotnull",
            "attcollation",
            "attidentity",
            "attgenerated",
        ];
        // \d+ asks for more.
        let extra: Vec<(&str, &str)> = [
            ("attstorage", "p"),
            ("attcompression", ""),
            ("attstattarget", "-1"),
            ("col_description", ""),
        ]
        .into_iter()
        .filter(|(k, _)| lower.contains(k))
        .collect();
        cols.extend(extra.iter().map(|(k, _)| *k));
        let rows = columns(node, who, &r.schema, &r.name)
            .await?
            .into_iter()
            .map(|(c, t)| {
                let mut row = vec![
                    Some(c),
                    Some(pg_type_name(&t)),
                    None,
                    Some("f".into()),
                    None,
                    Some(String::new()),
                    Some(String::new()),
                ];
                row.extend(extra.iter().map(|(_, v)| Some(v.to_string())));
                row
            })
            .collect();
        return Ok(Some(Outcome::rows(text_batch(&cols, rows))));
    }
    // Tab completion of table names: `... c.relname LIKE 'pre%'` or
    // `substring(pg_catalog.quote_ident(c.relname),1,3)='pre'`.
    if lower.contains("pg_class c") && lower.contains("pg_table_is_visible") {
        let prefix = between(sql, "LIKE '", "%'")
            .or_else(|| between(sql, "like '", "%'"))
            .or_else(|| between(sql, ")='", "'"))
            .unwrap_or_default()
            .replace("\\_", "_");
        let rows = relations(node, who)
            .await?
            .into_iter()
            .filter(|r| r.name.starts_with(&prefix))
            .map(|r| vec![Some(r.name), None])
            .collect();
        return Ok(Some(Outcome::rows(text_batch(&["relname", "text"], rows))));
    }
    Ok(Some(Outcome::rows(text_batch(&[], vec![]))))
}

/// Whether `lower` (a statement, lower-cased) is a catalog look-up: it names a
/// `pg_catalog` relation, or is one of Grafana's `information_schema` queries (which read
/// the search path). Names inside string literals do not count: a user's
/// `WHERE x = 'pg_class'` goes to the node.
fn is_lookup(lower: &str) -> bool {
    let mut code = String::with_capacity(lower.len());
    let mut quoted = false;
    for c in lower.chars() {
        if c == '\'' {
            quoted = !quoted;
        }
        code.push(if quoted { ' ' } else { c });
    }
    let names = [
        "pg_catalog.",
        "pg_class",
        "pg_namespace",
        "pg_attribute",
        "pg_type",
    ];
    names.iter().any(|n| code.contains(n))
        || (code.contains("information_schema.")
            && lower.contains("current_setting('search_path')"))
}

/// `sch.name`, or `name` for the default schema.
fn qualified(r: &Relation) -> String {
    if r.schema == "public" {
        r.name.clone()
    } else {
        format!("{}.{}", r.schema, r.name)
    }
}

/// The text between `start` and the next `end` after it.
fn between(sql: &str, start: &str, end: &str) -> Option<String> {
    let from = sql.find(start)? + start.len();
    let len = sql[from..].find(end)?;
    Some(sql[from..from + len].to_string())
}

/// The name in psql's `'^(name)$'` pattern after `prefix`.
fn pattern(sql: &str, prefix: &str) -> Option<String> {
    let p = between(sql, prefix, "'")?;
    Some(
        p.trim_start_matches("^(")
            .trim_end_matches(")$")
            .to_string(),
    )
}

async fn by_oid(
    node: &NodeHandle,
    who: &Principal,
    sql: &str,
    prefix: &str,
) -> Result<Option<Relation>, PgError> {
    let oid: Option<u32> = between(sql, prefix, "'").and_then(|s| s.parse().ok());
    Ok(relations(node, who)
        .await?
        .into_iter()
        .find(|r| Some(r.oid) == oid))
}

/// Every table and view of the node, as its `information_schema` lists them, sorted;
/// for a token limited to some tables, those only (as `GET /tables` lists them; its
/// views are left out, as what they read is not known here).
async fn relations(node: &NodeHandle, who: &Principal) -> Result<Vec<Relation>, PgError> {
    let rows = strings(
        node,
        who,
        "SELECT table_schema, table_name, table_type FROM information_schema.tables \
         WHERE table_schema <> 'information_schema' ORDER BY 1, 2",
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            let qualified = match r[0].as_str() {
                "public" => r[1].clone(),
                schema => format!("{schema}.{}", r[1]),
            };
            who.may_read(&BTreeSet::from([qualified]))
        })
        .enumerate()
        .map(|(i, r)| Relation {
            oid: FIRST_OID + i as u32,
            schema: r[0].clone(),
            name: r[1].clone(),
            view: r[2].eq_ignore_ascii_case("view"),
        })
        .collect())
}

/// The columns of `schema.name` with their Arrow types.
async fn columns(
    node: &NodeHandle,
    who: &Principal,
    schema: &str,
    name: &str,
) -> Result<Vec<(String, String)>, PgError> {
    let q = |s: &str| s.replace('\'', "''");
    let rows = strings(
        node,
        who,
        &format!(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_schema = '{}' AND table_name = '{}' ORDER BY ordinal_position",
            q(schema),
            q(name)
        ),
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect())
}

/// Postgres's name of the type a column of Arrow type `arrow` is sent as.
fn pg_type_name(arrow: &str) -> String {
    let t = arrow.to_ascii_lowercase();
    let name = if t.starts_with("int64") || t.starts_with("uint32") {
        "bigint"
    } else if t.starts_with("int32") || t.starts_with("uint16") {
        "integer"
    } else if t.starts_with("int") || t.starts_with("uint8") {
        "smallint"
    } else if t.starts_with("float64") {
        "double precision"
    } else if t.starts_with("float") {
        "real"
    } else if t.starts_with("boolean") {
        "boolean"
    } else if t.starts_with("timestamp") && (t.contains("some") || t.contains(',')) {
        "timestamp with time zone"
    } else if t.starts_with("timestamp") {
        "timestamp without time zone"
    } else if t.starts_with("date") {
        "date"
    } else {
        "text"
    };
    name.to_string()
}

/// Runs `sql` on the node and reads every column as text.
async fn strings(
    node: &NodeHandle,
    who: &Principal,
    sql: &str,
) -> Result<Vec<Vec<String>>, PgError> {
    let answer = node.query(sql.to_string(), who).await?;
    let mut out = Vec::new();
    for batch in &answer.output.batches {
        let cols: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| {
                datafusion::arrow::compute::cast(c, &datafusion::arrow::datatypes::DataType::Utf8)
                    .map_err(|e| PgError::Protocol(format!("reading the catalog: {e}")))
            })
            .collect::<Result<_, _>>()?;
        for r in 0..batch.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| {
                        let s = c.as_string::<i32>();
                        if s.is_null(r) {
                            String::new()
                        } else {
                            s.value(r).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_told_from_user_queries() {
        assert!(is_lookup("select c.oid from pg_catalog.pg_class c"));
        assert!(is_lookup(
            "select table_name from information_schema.tables \
             where x in (select current_setting('search_path'))"
        ));
        assert!(!is_lookup("select * from sys where hostname = 'pg_class'"));
        assert!(!is_lookup("select * from information_schema.tables"));
        assert!(!is_lookup("select count(*) from sys"));
        let sql = "WHERE c.relname OPERATOR(pg_catalog.~) '^(sys)$' COLLATE pg_catalog.default";
        assert_eq!(
            pattern(sql, "c.relname OPERATOR(pg_catalog.~) '"),
            Some("sys".to_string())
        );
    }
}
