//! The edge agent: what produces a machine's tables. Publishers connect to the publish
//! socket ([`socket`]) and their rows are kept in the [`store`]; files dropped in a
//! directory ([`file_drop`]) and the host's own state ([`host`]) are built-in publishers.
//! Only tables wanted upstream (or prewarmed) are collected.

pub mod admission;
pub mod config;
pub mod file_drop;
pub mod host;
pub mod socket;
pub mod store;

use std::time::SystemTime;

use datafusion::arrow::record_batch::RecordBatch;

use crate::generation::{Part, SourceStamp};

/// One part of a table (see [`Part`]), ready to enter a generation.
#[derive(Debug, Clone)]
pub struct Published {
    pub table: String,
    pub part: Part,
}

impl Published {
    pub fn new(table: &str, key: String, batch: RecordBatch, sources: Vec<SourceStamp>) -> Self {
        Published {
            table: table.to_string(),
            part: Part::new(key, batch, sources),
        }
    }
}

/// What a publisher produced for one generation: tables, and sources whose input was
/// refused this round (source, message), reported by `GET /tables`.
#[derive(Debug, Default)]
pub struct Collected {
    pub tables: Vec<Published>,
    pub errors: Vec<(String, String)>,
}

impl From<Vec<Published>> for Collected {
    fn from(tables: Vec<Published>) -> Self {
        Collected {
            tables,
            errors: Vec::new(),
        }
    }
}

/// Something that publishes tables into each generation (the socket store, file drop,
/// host, the fleet simulator). `collect` is CPU and I/O work: it runs on the compute pool.
pub trait LocalPublisher: Send + 'static {
    fn name(&self) -> &str;
    fn collect(&mut self, now: SystemTime) -> Collected;
}
