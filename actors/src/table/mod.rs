//! The table model: column types, table definitions (from `schemas/*.toml` and static
//! tables), row cells, and the one place where rows become Arrow record batches
//! ([`TableBuilder`]; rows keyed by column in [`rows`], text files of rows in `text`).

mod builder;
pub mod rows;
mod schema;
mod text;

pub use builder::{unix_millis, Cell, TableBuilder};
pub use schema::{load_schema_dir, ColumnDef, ColumnType, SchemaRegistry, TableDef, MACHINE_IP};
pub use text::parse_text_table;
