//! One decoded copy of each table schema for all of a process's links: the schemas its
//! children send, by their Arrow IPC bytes.
//!
//! Why: a cluster proxy has a link per machine, and every machine sends the same few
//! schemas; each decoded copy is a field list and a field apiece (about a dozen
//! allocations per table). In `queryd demo --machines 3000` the links' copies were about
//! 44 MiB of a 352 MiB heap (heaptrack). The copies are held by the parts they describe;
//! this map only points at them (weakly), so a schema no part uses any longer is freed.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use datafusion::arrow::datatypes::{Schema, SchemaRef};

use super::ipc::decode_schema;
use crate::link::LinkError;

/// Schemas remembered at most. A child sending ever new schemas gets copies of its own
/// past this (decoded as before), not a map that grows without end.
const MAX_SCHEMAS: usize = 4096;

static SCHEMAS: LazyLock<Mutex<HashMap<Vec<u8>, Weak<Schema>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The schema `bytes` encode: the copy another link decoded if one is still in use, else
/// decoded (and remembered).
pub(super) fn shared_schema(bytes: &[u8]) -> Result<SchemaRef, LinkError> {
    let mut schemas = SCHEMAS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(schema) = schemas.get(bytes).and_then(Weak::upgrade) {
        return Ok(schema);
    }
    let schema = decode_schema(bytes)?;
    if schemas.len() >= MAX_SCHEMAS {
        schemas.retain(|_, s| s.strong_count() > 0);
    }
    if schemas.len() < MAX_SCHEMAS {
        schemas.insert(bytes.to_vec(), Arc::downgrade(&schema));
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, Field};

    use super::super::ipc::IpcWriter;
    use super::*;

    fn bytes(column: &str) -> Vec<u8> {
        let schema = Schema::new(vec![Field::new(column, DataType::Int64, false)]);
        IpcWriter::new().schema(&schema).expect("encode")
    }

    #[test]
    fn links_share_one_copy_of_a_schema_while_it_is_used() {
        let a = bytes("shared_schemas_a");
        let first = shared_schema(&a).expect("decode");
        let second = shared_schema(&a).expect("decode");
        assert!(Arc::ptr_eq(&first, &second), "one copy for both");
        assert_eq!(first.field(0).name(), "shared_schemas_a");

        let other = shared_schema(&bytes("shared_schemas_b")).expect("decode");
        assert_eq!(other.field(0).name(), "shared_schemas_b");
        assert!(!Arc::ptr_eq(&first, &other));

        // Once no part holds it, it is decoded anew (and the same as before).
        let held = Arc::downgrade(&first);
        drop((first, second));
        assert!(held.upgrade().is_none(), "the map does not keep it alive");
        let again = shared_schema(&a).expect("decode");
        assert_eq!(again.field(0).name(), "shared_schemas_a");
    }

    #[test]
    fn bad_bytes_are_an_error_and_not_remembered() {
        assert!(shared_schema(b"not a schema").is_err());
        assert!(shared_schema(b"not a schema").is_err());
    }
}
