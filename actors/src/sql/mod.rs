//! SQL over one generation: the DataFusion context a snapshot answers from, the read-only
//! statement check, views cached per generation, and the pool queries run on.

mod division;
mod engine;
mod pool;
mod references;
mod statement;
mod views;

pub use engine::{Origin, QueryLimits, QueryOutput, Snapshot, TableUse};
pub(crate) use pool::AbortOnDrop;
pub use pool::SqlPool;
pub use references::referenced_tables;
pub use statement::check_read_only;
pub use views::{load_views, ViewDef, ViewStats, ViewsFile};
