//! What runs at the edge of the hierarchy: publishers that produce a machine's tables.
//! (The publish socket and file-drop publishers join this module with the edge agent.)

pub mod host;

use std::time::SystemTime;

use datafusion::arrow::record_batch::RecordBatch;

use crate::generation::SourceStamp;

/// Rows of one table from one or more sources, ready to enter a generation.
#[derive(Debug, Clone)]
pub struct Published {
    pub table: String,
    pub batch: RecordBatch,
    pub sources: Vec<SourceStamp>,
}

/// Something built into the node that publishes tables each interval (the host publisher,
/// the fleet simulator). `collect` is CPU and I/O work: it runs on the compute pool.
pub trait LocalPublisher: Send + 'static {
    fn name(&self) -> &str;
    fn collect(&mut self, now: SystemTime) -> Vec<Published>;
}
