//! Runaway-query quarantine: a query (by normalised text) that hits a limit (time, memory,
//! answer size, complexity) `strikes` times within `window` is refused for `cool_down`
//! with a message saying so, instead of taking the node's time again and again. Offenders
//! are the `query_quarantine` table (computed when read) and `/metrics`; operators lift a
//! quarantine with `POST /admin/quarantine/lift` (from loopback).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result as DfResult;
use serde::Deserialize;

use crate::error::QueryError;
use crate::sql::Computed;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    /// Limits hit within `window` that quarantine a query; 0 turns quarantine off.
    pub strikes: usize,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long a quarantined query is refused.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
    /// Queries remembered at most (the oldest unquarantined are forgotten first).
    pub max_tracked: usize,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            strikes: 3,
            window: Duration::from_secs(600),
            cool_down: Duration::from_secs(900),
            max_tracked: 1000,
        }
    }
}

/// The same query whatever its spacing, case of keywords or trailing semicolon: runs of
/// white space become one space; text inside quotes is kept as is.
pub fn normalise(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len().min(4096));
    let mut quote: Option<char> = None;
    let mut space = false;
    for c in sql.trim().trim_end_matches(';').trim_end().chars() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c.is_whitespace() => space = true,
            None => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
                out.extend(c.to_lowercase());
            }
        }
    }
    out
}

struct Entry {
    /// The query's text, shortened for display.
    text: String,
    client: String,
    limit: &'static str,
    hits: VecDeque<Instant>,
    until: Option<(Instant, SystemTime)>,
    last_hit: Instant,
}

/// One row of `query_quarantine`.
#[derive(Debug, Clone)]
pub struct Offender {
    pub text: String,
    pub client: String,
    pub limit: &'static str,
    pub count: usize,
    pub until: Option<SystemTime>,
}

pub struct Quarantine {
    config: QuarantineConfig,
    /// By a hash of the normalised text: a tracked 1 MiB statement costs its entry, not
    /// its text (only `SHOWN_CHARS` of it are kept, for display).
    entries: Mutex<HashMap<u64, Entry>>,
}

fn hash_of(normalised: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    normalised.hash(&mut h);
    h.finish()
}

const SHOWN_CHARS: usize = 300;

impl Quarantine {
    pub fn new(config: QuarantineConfig) -> Arc<Self> {
        Arc::new(Quarantine {
            config,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses `key` while it is quarantined.
    pub fn check(&self, key: &str) -> Result<(), QueryError> {
        let now = Instant::now();
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(&hash_of(key)) else {
            return Ok(());
        };
        match e.until {
            Some((until, wall)) if until > now => Err(QueryError::Quarantined {
                retry_after_secs: until.duration_since(now).as_secs().max(1),
                until: humantime::format_rfc3339_seconds(wall).to_string(),
                limit: e.limit.to_string(),
                strikes: e.hits.len(),
            }),
            Some(_) => {
                // Served its time: it starts again with a clean record.
                e.until = None;
                e.hits.clear();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records that `key` hit `limit`; returns true if that quarantined it.
    pub fn strike(&self, key: &str, sql: &str, client: &str, limit: &'static str) -> bool {
        if self.config.strikes == 0 {
            return false;
        }
        let now = Instant::now();
        let key = hash_of(key);
        let mut entries = self.lock();
        if !entries.contains_key(&key) && entries.len() >= self.config.max_tracked {
            let oldest = entries
                .iter()
                .filter(|(_, e)| e.until.is_none_or(|(u, _)| u <= now))
                .min_by_key(|(_, e)| e.last_hit)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    entries.remove(&k);
                }
                None => return false,
            }
        }
        let e = entries.entry(key).or_insert_with(|| Entry {
            text: sql.chars().take(SHOWN_CHARS).collect(),
            client: String::new(),
            limit,
            hits: VecDeque::new(),
            until: None,
            last_hit: now,
        });
        e.client = client.to_string();
        e.limit = limit;
        e.last_hit = now;
        e.hits.push_back(now);
        while e
            .hits
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.config.window)
        {
            e.hits.pop_front();
        }
        if e.until.is_none() && e.hits.len() >= self.config.strikes {
            e.until = Some((
                now + self.config.cool_down,
                SystemTime::now() + self.config.cool_down,
            ));
            tracing::warn!(query = %e.text, client, limit, strikes = e.hits.len(), cool_down = ?self.config.cool_down, "query quarantined");
            return true;
        }
        false
    }

    /// Lifts the quarantine of the query `sql` (normalised here), or of every query when
    /// None; returns how many were lifted.
    pub fn lift(&self, sql: Option<&str>) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        match sql {
            Some(s) => {
                let key = hash_of(&normalise(s));
                entries.retain(|k, e| !(*k == key && e.until.is_some()));
            }
            None => entries.retain(|_, e| e.until.is_none()),
        }
        let lifted = before - entries.len();
        if lifted > 0 {
            tracing::info!(lifted, "quarantine lifted by an operator");
        }
        lifted
    }

    /// Queries quarantined now, and those with strikes in the window.
    pub fn offenders(&self) -> Vec<Offender> {
        let now = Instant::now();
        let mut out: Vec<Offender> = self
            .lock()
            .values()
            .filter(|e| {
                e.until.is_some_and(|(u, _)| u > now)
                    || e.hits
                        .back()
                        .is_some_and(|t| now.duration_since(*t) <= self.config.window)
            })
            .map(|e| Offender {
                text: e.text.clone(),
                client: e.client.clone(),
                limit: e.limit,
                count: e.hits.len(),
                until: e.until.filter(|(u, _)| *u > now).map(|(_, w)| w),
            })
            .collect();
        out.sort_by(|a, b| b.count.cmp(&a.count).then(a.text.cmp(&b.text)));
        out
    }

    /// Queries refused now.
    pub fn quarantined(&self) -> usize {
        self.offenders()
            .iter()
            .filter(|o| o.until.is_some())
            .count()
    }
}

/// `query_quarantine`: the offenders, read live at each scan.
pub struct QuarantineTable {
    quarantine: Arc<Quarantine>,
    schema: SchemaRef,
}

impl std::fmt::Debug for QuarantineTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuarantineTable")
    }
}

impl QuarantineTable {
    pub const NAME: &'static str = "query_quarantine";

    pub fn new(quarantine: Arc<Quarantine>) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("text", DataType::Utf8, false),
            Field::new("client", DataType::Utf8, false),
            Field::new("limit_hit", DataType::Utf8, false),
            Field::new("count", DataType::Int64, false),
            Field::new(
                "until",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]));
        QuarantineTable { quarantine, schema }
    }
}

impl Computed for QuarantineTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn batch(&self) -> DfResult<RecordBatch> {
        let rows = self.quarantine.offenders();
        let millis = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.text))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.client),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.limit))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.count as i64),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter(rows.iter().map(|r| r.until.map(millis)))
                    .with_timezone("UTC"),
            ),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_folds_space_case_and_semicolons_but_not_literals() {
        assert_eq!(
            normalise("  SELECT   repeat('A  b', 9)\n FROM t ;"),
            "select repeat('A  b', 9) from t"
        );
        assert_ne!(normalise("SELECT 'a'"), normalise("SELECT 'A'"));
    }

    #[test]
    fn strikes_within_the_window_quarantine_and_lifting_frees() {
        let q = Quarantine::new(QuarantineConfig {
            strikes: 2,
            ..Default::default()
        });
        let key = normalise("SELECT slow()");
        assert!(!q.strike(&key, "SELECT slow()", "127.0.0.1", "time"));
        q.check(&key).expect("one strike is not enough");
        assert!(q.strike(&key, "SELECT slow()", "127.0.0.1", "time"));
        match q.check(&key) {
            Err(QueryError::Quarantined { limit, strikes, .. }) => {
                assert_eq!((limit.as_str(), strikes), ("time", 2))
            }
            other => panic!("{other:?}"),
        }
        let rows = q.offenders();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].until.is_some());
        assert_eq!(q.quarantined(), 1);
        assert_eq!(q.lift(Some("select   SLOW();")), 1);
        q.check(&key).expect("lifted");
    }
}
