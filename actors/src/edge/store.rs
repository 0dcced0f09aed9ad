//! The edge agent's table store: the last good copy of each (publisher, table), the set of
//! tables wanted upstream, and the limits on publishers. Socket sessions write into it;
//! the sealer reads it through [`StoreCollector`] at each generation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use datafusion::arrow::record_batch::RecordBatch;
use query_client::protocol::{Publish, PublishError};
use tokio::sync::watch;

use super::rows::json_rows_to_batch;
use super::{Collected, LocalPublisher, Published};
use crate::generation::SourceStamp;
use crate::table::SchemaRegistry;

#[derive(Debug, Clone)]
pub struct EdgeLimits {
    pub max_line_bytes: usize,
    pub max_rows_per_publish: usize,
    pub max_publishers: usize,
    pub publisher_stale_after: Duration,
}

struct Copy {
    batch: RecordBatch,
    /// When these rows were published: their age.
    published_at: SystemTime,
    /// When the publisher last sent this table, even a refused copy: its liveness. A
    /// publisher still sending keeps its last good rows.
    last_heard: SystemTime,
}

#[derive(Default)]
struct Inner {
    copies: BTreeMap<(String, String), Copy>,
    connected: usize,
}

pub struct EdgeStore {
    pub machine_ip: String,
    pub schemas: SchemaRegistry,
    pub limits: EdgeLimits,
    inner: Mutex<Inner>,
    wanted: watch::Sender<BTreeSet<String>>,
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
            limits,
            inner: Mutex::new(Inner::default()),
            wanted: watch::Sender::new(wanted),
        }
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

    /// Counts a new connection; refused past `max_publishers`.
    pub fn connect(&self) -> Result<(), PublishError> {
        let mut inner = self.lock();
        if inner.connected >= self.limits.max_publishers {
            return Err(PublishError::new(format!(
                "too many publishers: this agent accepts {}",
                self.limits.max_publishers
            )));
        }
        inner.connected += 1;
        Ok(())
    }

    /// A connection ended. Its rows stay until they are `publisher_stale_after` old.
    pub fn disconnect(&self) {
        let mut inner = self.lock();
        inner.connected = inner.connected.saturating_sub(1);
    }

    /// Validates and stores a publisher's full copy of a table. A refused publish leaves the
    /// previous copy in place.
    pub fn publish(&self, publisher: &str, p: &Publish) -> Result<usize, PublishError> {
        let result = self.validate(p);
        let now = SystemTime::now();
        let key = (publisher.to_string(), p.table.clone());
        let mut inner = self.lock();
        match result {
            Ok(batch) => {
                let rows = batch.num_rows();
                inner.copies.insert(
                    key,
                    Copy {
                        batch,
                        published_at: now,
                        last_heard: now,
                    },
                );
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
        json_rows_to_batch(def, &self.machine_ip, &p.rows)
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
                        source,
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
