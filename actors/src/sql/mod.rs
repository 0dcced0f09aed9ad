//! SQL over one generation: the DataFusion context a snapshot answers from, the read-only
//! statement check and the front door every statement passes, views cached per generation,
//! memory limits and guarded functions, and the pools queries run on.

mod answers;
mod casts;
mod coalesced;
pub mod computed;
pub mod describe;
mod division;
mod eager_aggregate;
mod engine;
mod front_door;
mod guarded;
mod int_division;
mod kept_aggregates;
mod kept_physical;
mod machine_keys;
mod memory;
mod met_once;
mod names;
mod not_in;
mod physical_rules;
mod plans;
mod pool;
mod references;
mod shapes;
mod single_row;
mod spread;
mod statement;
mod subquery;
mod time_slice;
mod utc_date_trunc;
mod views;
mod whole_table_min_max;
mod window_topn;

pub use answers::{AnswerCache, AnswerKey};
pub use computed::{Computed, ComputedTable};
pub use engine::{
    BuildOptions, Origin, Phases, QueryLimits, QueryOutput, Snapshot, TableCopies, TableUse,
    DEFAULT_MAX_RESULT_BYTES, SINGLE_PARTITION_ROWS,
};
pub use front_door::{parse_checked, ParseLimits, STACK_BYTES};
pub use kept_aggregates::DEFAULT_AGGREGATE_CACHE_MB;
pub use memory::MemoryBudget;
pub use plans::{PlanCache, DEFAULT_PLAN_CACHE_ENTRIES};
pub use pool::SqlPool;
pub(crate) use pool::{lower_priority, AbortOnDrop};
pub use references::{referenced_tables, referenced_tables_of, tables_behind};
pub use statement::check_read_only;
pub use views::{load_views, ViewDef, ViewStats, ViewsFile};
