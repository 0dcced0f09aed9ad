//! Table definitions as operators write them in TOML, and their Arrow schemas.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::error::{ConfigError, ConfigResult};

/// Column every published row carries, stamped by the agent (never by the publisher) so
/// that tables of one machine join on it.
pub const MACHINE_IP: &str = "machine_ip";

/// The column types a table may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Int64,
    Float64,
    String,
    Bool,
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp,
}

impl ColumnType {
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::String => DataType::Utf8,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::String => "string",
            ColumnType::Bool => "bool",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    #[serde(default)]
    pub nullable: bool,
    #[serde(default)]
    pub description: String,
}

/// A table definition: a published table's schema file, or the head of a static table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Columns that identify a row (with `machine_ip` for published tables).
    #[serde(default)]
    pub key: Vec<String>,
    pub columns: Vec<ColumnDef>,
    /// A table enumerating the fleet's configuration (which clusters and machines exist;
    /// OSR 2.3): served only whole (never with a source's rows dropped), and the source of
    /// the clusters and machines answers are expected to cover (see
    /// `node::completeness`).
    #[serde(default)]
    pub sourced: bool,
}

impl TableDef {
    /// Checks names, duplicates and keys. `published` tables may not declare `machine_ip`:
    /// the agent adds it.
    pub fn validate(&self, published: bool) -> ConfigResult<()> {
        let bad = |msg: String| ConfigError::Invalid {
            what: format!("table '{}'", self.name),
            message: msg,
        };
        if !valid_identifier(&self.name) {
            return Err(bad(
                "table name must be lowercase letters, digits and '_', starting with a letter"
                    .into(),
            ));
        }
        if self.columns.is_empty() {
            return Err(bad("declares no columns".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.columns {
            if !valid_identifier(&c.name) {
                return Err(bad(format!(
                    "column name '{}' is not a lowercase identifier",
                    c.name
                )));
            }
            if published && c.name == MACHINE_IP {
                return Err(bad(format!(
                    "'{MACHINE_IP}' is added by the agent; do not declare it"
                )));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(bad(format!("column '{}' is declared twice", c.name)));
            }
        }
        for k in &self.key {
            if !(seen.contains(k.as_str()) || (published && k == MACHINE_IP)) {
                return Err(bad(format!("key column '{k}' is not a column")));
            }
        }
        Ok(())
    }

    /// The Arrow schema. Published tables get `machine_ip` as their first column.
    pub fn arrow_schema(&self, published: bool) -> SchemaRef {
        let mut fields = Vec::with_capacity(self.columns.len() + 1);
        if published {
            fields.push(Field::new(MACHINE_IP, DataType::Utf8, false));
        }
        fields.extend(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.ty.arrow_type(), c.nullable)),
        );
        Arc::new(Schema::new(fields))
    }

    /// Column definitions in schema order, `machine_ip` included for published tables.
    pub fn full_columns(&self, published: bool) -> Vec<ColumnDef> {
        let mut cols = Vec::with_capacity(self.columns.len() + 1);
        if published {
            cols.push(ColumnDef {
                name: MACHINE_IP.into(),
                ty: ColumnType::String,
                nullable: false,
                description: "Address of the machine that published the row (set by the agent)"
                    .into(),
            });
        }
        cols.extend(self.columns.iter().cloned());
        cols
    }
}

fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 64
}

/// The published tables this node knows, by name.
#[derive(Debug, Clone, Default)]
pub struct SchemaRegistry {
    tables: BTreeMap<String, Arc<TableDef>>,
}

impl SchemaRegistry {
    pub fn get(&self, name: &str) -> Option<&Arc<TableDef>> {
        self.tables.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<TableDef>> {
        self.tables.values()
    }

    pub fn insert(&mut self, def: TableDef) -> ConfigResult<()> {
        def.validate(true)?;
        if self.tables.contains_key(&def.name) {
            return Err(ConfigError::Invalid {
                what: format!("table '{}'", def.name),
                message: "defined twice".into(),
            });
        }
        self.tables.insert(def.name.clone(), Arc::new(def));
        Ok(())
    }
}

/// Loads every `*.toml` in `dir` as a published table's schema. The file stem must match
/// the table name, so an operator finds a table's schema by its name.
pub fn load_schema_dir(dir: &Path) -> ConfigResult<SchemaRegistry> {
    let mut registry = SchemaRegistry::default();
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigError::io(dir, e))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let def: TableDef = crate::config::read_toml(&path)?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if stem != def.name {
            return Err(ConfigError::Invalid {
                what: path.display().to_string(),
                message: format!(
                    "file defines table '{}' but is named '{stem}.toml'",
                    def.name
                ),
            });
        }
        registry.insert(def)?;
    }
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(src: &str) -> TableDef {
        toml::from_str(src).expect("parses")
    }

    #[test]
    fn machine_ip_is_reserved_and_added_first() {
        let d = def(r#"name = "t"
columns = [{ name = "machine_ip", type = "string" }]"#);
        assert!(d.validate(true).is_err());
        assert!(d.validate(false).is_ok());
        let d = def(r#"name = "t"
columns = [{ name = "x", type = "int64" }]"#);
        let s = d.arrow_schema(true);
        assert_eq!(s.field(0).name(), MACHINE_IP);
        assert_eq!(s.field(1).data_type(), &DataType::Int64);
    }

    #[test]
    fn rejects_bad_keys_duplicates_and_unknown_fields() {
        let d = def(r#"name = "t"
key = ["nope"]
columns = [{ name = "x", type = "int64" }]"#);
        assert!(d.validate(true).is_err());
        let d = def(r#"name = "t"
columns = [{ name = "x", type = "int64" }, { name = "x", type = "bool" }]"#);
        assert!(d.validate(true).is_err());
        assert!(toml::from_str::<TableDef>(
            r#"name = "t"
colums = []"#
        )
        .is_err());
        assert!(toml::from_str::<TableDef>(
            r#"name = "t"
columns = [{ name = "x", type = "decimal" }]"#
        )
        .is_err());
    }

    #[test]
    fn shipped_schemas_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let reg = load_schema_dir(&dir).expect("shipped schemas are valid");
        for t in [
            "sys",
            "processes",
            "filesystem",
            "network_interfaces",
            "machinerole",
            "load_info",
        ] {
            assert!(reg.get(t).is_some(), "schema {t} shipped");
        }
    }
}
