//! The table model: column types, table definitions (from `schemas/*.toml` and static
//! tables), row cells, and the one place where rows become Arrow record batches.

mod builder;
mod schema;

pub use builder::{unix_millis, Cell, TableBuilder};
pub use schema::{load_schema_dir, ColumnDef, ColumnType, SchemaRegistry, TableDef, MACHINE_IP};
