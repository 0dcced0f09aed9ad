//! The edge agent's table store: the last good copy of each (publisher, table), the set of
//! tables wanted upstream, and the limits on publishers and on the bytes they keep. Socket
//! sessions write into it; the sealer reads it through [`StoreCollector`] at each
//! generation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use datafusion::arrow::record_batch::RecordBatch;
use query_client::protocol::{Publish, PublishError};
use tokio::sync::watch;

use super::admission::Connections;
use super::{Collected, LocalPublisher, Published};
use crate::generation::SourceStamp;
use crate::metrics::Metrics;
use crate::table::rows::json_rows_to_batch;
use crate::table::SchemaRegistry;

#[derive(Debug, Clone)]
pub struct EdgeLimits {
    pub max_line_bytes: usize,
    pub max_rows_per_publish: usize,
    pub max_publishers: usize,
    pub max_tables_per_publisher: usize,
    pub max_publisher_names: usize,
    pub max_bytes_per_publisher: usize,
    pub max_stored_bytes: usize,
    pub hello_timeout: Duration,
    pub idle_timeout: Duration,
    /// Empty: any uid that can open the socket.
    pub allowed_uids: Vec<u32>,
    pub publisher_stale_after: Duration,
}

impl EdgeLimits {
    /// The defaults of `[edge]` (tests).
    pub fn defaults() -> Self {
        super::config::EdgeConfig::default().limits()
    }
}

struct Copy {
    batch: RecordBatch,
    /// When these rows were published: their age.
    published_at: SystemTime,
    /// When the publisher last sent this table, even a refused copy: its liveness. A
    /// publisher still sending keeps its last good rows.
    last_heard: SystemTime,
    /// What the rows take in memory, counted against the byte limits.
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    copies: BTreeMap<(String, String), Copy>,
    /// The sum of `bytes` over `copies`.
    bytes: usize,
}

impl Inner {
    fn publisher_bytes(&self, publisher: &str) -> usize {
        self.copies
            .iter()
            .filter(|((p, _), _)| p == publisher)
            .map(|(_, c)| c.bytes)
            .sum()
    }

    fn holds(&self, publisher: &str) -> bool {
        self.copies.keys().any(|(p, _)| p == publisher)
    }

    fn names(&self) -> usize {
        self.copies
            .keys()
            .map(|(p, _)| p)
            .collect::<BTreeSet<_>>()
            .len()
    }
}

pub struct EdgeStore {
    pub machine_ip: String,
    pub schemas: SchemaRegistry,
    pub limits: EdgeLimits,
    /// The publish socket's connections (Unix and TCP together).
    pub connections: Arc<Connections>,
    inner: Mutex<Inner>,
    wanted: watch::Sender<BTreeSet<String>>,
    /// Refusals are counted here, by limit (`query_publish_refusals_total`).
    pub metrics: Arc<Metrics>,
}

impl EdgeStore {
    pub fn new(
        machine_ip: String,
        schemas: SchemaRegistry,
        limits: EdgeLimits,
        wanted: BTreeSet<String>,
    ) -> Self {
        EdgeStore {
            machine_ip,
            schemas,
            // A publisher idle longer than a newcomer has to say hello may make room for it.
            connections: Connections::new(limits.max_publishers, limits.hello_timeout),
            limits,
            inner: Mutex::new(Inner::default()),
            wanted: watch::Sender::new(wanted),
            metrics: Arc::default(),
        }
    }

    /// Counts refusals in the node's metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing in the critical sections can leave the maps half-changed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the wanted set; sessions tell their publishers what changed.
    pub fn set_wanted(&self, tables: BTreeSet<String>) {
        self.wanted.send_if_modified(|w| {
            let changed = *w != tables;
            *w = tables;
            changed
        });
    }

    pub fn wanted(&self) -> BTreeSet<String> {
        self.wanted.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<BTreeSet<String>> {
        self.wanted.subscribe()
    }

    /// Whether one more distinct publisher may hold rows (checked at hello, so a publisher
    /// learns it before sending rows, and again at each publish).
    pub fn admit_name(&self, publisher: &str) -> Result<(), PublishError> {
        let inner = self.lock();
        if !inner.holds(publisher) && inner.names() >= self.limits.max_publisher_names {
            self.metrics.record_publish_refusal("max_publisher_names");
            return Err(PublishError::new(format!(
                "too many publishers hold rows: this agent keeps {} ([edge] max_publisher_names)",
                self.limits.max_publisher_names
            )));
        }
        Ok(())
    }

    /// Bytes of rows the store keeps now, all publishers.
    pub fn stored_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Validates and stores a publisher's full copy of a table. A refused publish leaves the
    /// previous copy in place.
    pub fn publish(&self, publisher: &str, p: &Publish) -> Result<usize, PublishError> {
        let result = self.validate(p);
        let now = SystemTime::now();
        let key = (publisher.to_string(), p.table.clone());
        let mut inner = self.lock();
        match result.and_then(|batch| self.fits(&inner, &key, batch)) {
            Ok((batch, bytes)) => {
                let rows = batch.num_rows();
                let old = inner.copies.insert(
                    key,
                    Copy {
                        batch,
                        published_at: now,
                        last_heard: now,
                        bytes,
                    },
                );
                inner.bytes = inner.bytes + bytes - old.map_or(0, |c| c.bytes);
                Ok(rows)
            }
            Err(e) => {
                if let Some(c) = inner.copies.get_mut(&key) {
                    c.last_heard = now;
                }
                Err(e)
            }
        }
    }

    /// Checks a new copy against the name and byte limits, counting the copy it replaces
    /// as gone.
    fn fits(
        &self,
        inner: &Inner,
        key: &(String, String),
        batch: RecordBatch,
    ) -> Result<(RecordBatch, usize), PublishError> {
        let (publisher, table) = key;
        let l = &self.limits;
        if !inner.holds(publisher) && inner.names() >= l.max_publisher_names {
            self.metrics.record_publish_refusal("max_publisher_names");
            return Err(PublishError::new(format!(
                "too many publishers hold rows: this agent keeps {} ([edge] max_publisher_names)",
                l.max_publisher_names
            ))
            .table(table));
        }
        let bytes = batch.get_array_memory_size();
        let old = inner.copies.get(key).map_or(0, |c| c.bytes);
        let mine = inner.publisher_bytes(publisher) - old + bytes;
        if mine > l.max_bytes_per_publisher {
            self.metrics
                .record_publish_refusal("max_bytes_per_publisher");
            return Err(PublishError::new(format!(
                "this publisher's rows would take {mine} bytes, over the limit of {} \
                 ([edge] max_bytes_per_publisher); the previous copy stays",
                l.max_bytes_per_publisher
            ))
            .table(table));
        }
        let total = inner.bytes - old + bytes;
        if total > l.max_stored_bytes {
            self.metrics.record_publish_refusal("max_stored_bytes");
            return Err(PublishError::new(format!(
                "the agent's rows would take {total} bytes, over the limit of {} \
                 ([edge] max_stored_bytes); the previous copy stays",
                l.max_stored_bytes
            ))
            .table(table));
        }
        Ok((batch, bytes))
    }

    fn validate(&self, p: &Publish) -> Result<RecordBatch, PublishError> {
        let def = self
            .schemas
            .get(&p.table)
            .ok_or_else(|| PublishError::new("no schema for this table").table(&p.table))?;
        if !self.wanted.borrow().contains(&p.table) {
            return Err(PublishError::new(
                "not requested now: publish the tables of the latest want",
            )
            .table(&p.table));
        }
        if p.rows.len() > self.limits.max_rows_per_publish {
            return Err(PublishError::new(format!(
                "{} rows exceed the limit of {} per publish",
                p.rows.len(),
                self.limits.max_rows_per_publish
            ))
            .table(&p.table));
        }
        json_rows_to_batch(def, Some(&self.machine_ip), &p.rows)
    }

    /// Every wanted table's copies not older than `publisher_stale_after`; older ones leave.
    fn collect(&self, now: SystemTime) -> Vec<Published> {
        let wanted = self.wanted();
        let stale = self.limits.publisher_stale_after;
        let mut inner = self.lock();
        inner.copies.retain(|(publisher, table), c| {
            let fresh = now.duration_since(c.last_heard).unwrap_or_default() <= stale;
            if !fresh {
                tracing::info!(
                    publisher,
                    table,
                    "publisher stopped sending; its rows leave"
                );
            }
            fresh
        });
        inner.bytes = inner.copies.values().map(|c| c.bytes).sum();
        inner
            .copies
            .iter()
            .filter(|((_, table), _)| wanted.contains(table))
            .map(|((publisher, table), c)| {
                let source = format!("{}/{publisher}", self.machine_ip);
                Published::new(
                    table,
                    source.clone(),
                    c.batch.clone(),
                    vec![SourceStamp {
                        source: source.into(),
                        published_at: c.published_at,
                    }],
                )
            })
            .collect()
    }
}

/// The store as a publisher of the node's generations.
pub struct StoreCollector(pub Arc<EdgeStore>);

impl LocalPublisher for StoreCollector {
    fn name(&self) -> &str {
        "publish-socket"
    }

    fn collect(&mut self, now: SystemTime) -> Collected {
        Collected {
            tables: self.0.collect(now),
            errors: Vec::new(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    pub(crate) fn store(limits: EdgeLimits) -> EdgeStore {
        let schemas = crate::table::load_schema_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas"),
        )
        .expect("schemas");
        let wanted = ["machinerole".to_string(), "load_info".to_string()].into();
        EdgeStore::new("10.0.0.1".into(), schemas, limits, wanted)
    }

    fn roles(n: usize, width: usize) -> Publish {
        let rows = (0..n)
            .map(|i| {
                let mut r = query_client::protocol::Row::new();
                r.insert("role".into(), format!("{i:0width$}").into());
                r
            })
            .collect();
        Publish {
            table: "machinerole".into(),
            rows,
        }
    }

    #[test]
    fn bytes_are_bounded_per_publisher_and_per_agent() {
        let mut limits = EdgeLimits::defaults();
        limits.max_bytes_per_publisher = 40_000;
        limits.max_stored_bytes = 100_000;
        let s = store(limits);
        let small = roles(10, 10);
        assert_eq!(s.publish("a", &small), Ok(10));
        let first = s.stored_bytes();
        assert!(first > 0);
        // Over the publisher's limit: refused, the previous copy stays.
        let e = s.publish("a", &roles(1000, 100)).expect_err("too big");
        assert!(e.message.contains("max_bytes_per_publisher"), "{e}");
        assert_eq!(s.stored_bytes(), first);
        // Replacing a copy counts the old one as gone.
        assert_eq!(s.publish("a", &small), Ok(10));
        assert_eq!(s.stored_bytes(), first);
        // Many publishers of copies each under their limit: the agent's limit holds.
        let mid = roles(150, 100);
        let mut refused = 0;
        for i in 0..20 {
            if let Err(e) = s.publish(&format!("p{i}"), &mid) {
                assert!(e.message.contains("max_stored_bytes"), "{e}");
                refused += 1;
            }
            assert!(s.stored_bytes() <= 100_000);
        }
        assert!(refused > 0);
    }

    #[test]
    fn distinct_publishers_are_bounded() {
        let mut limits = EdgeLimits::defaults();
        limits.max_publisher_names = 2;
        let s = store(limits);
        let small = roles(1, 1);
        assert!(s.publish("a", &small).is_ok());
        assert!(s.publish("b", &small).is_ok());
        assert!(s.admit_name("a").is_ok(), "a holds rows already");
        let e = s.admit_name("c").expect_err("names");
        assert!(e.message.contains("max_publisher_names"), "{e}");
        let e = s.publish("c", &small).expect_err("names");
        assert!(e.message.contains("max_publisher_names"), "{e}");
    }
}
