//! Arrow IPC for the link: schemas and part rows as IPC stream messages, and a reader
//! hardened against hostile bytes (lengths checked, Arrow's panics caught).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::ipc::convert::fb_to_schema;
use datafusion::arrow::ipc::reader::{read_dictionary, read_record_batch};
use datafusion::arrow::ipc::writer::{
    write_message, DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
};
use datafusion::arrow::ipc::{root_as_message, MessageHeader, MetadataVersion};
use datafusion::arrow::record_batch::RecordBatch;
#[cfg(test)]
use datafusion::arrow::row::{RowConverter, SortField};

use crate::link::wire::IpcRows;
use crate::link::LinkError;

/// Encodes schemas and batches as Arrow IPC stream messages (continuation marker, length,
/// flatbuffer metadata, body), reusing its scratch buffers from call to call.
pub(super) struct IpcWriter {
    options: IpcWriteOptions,
    context: IpcWriteContext,
}

impl IpcWriter {
    pub(super) fn new() -> Self {
        // 8-byte alignment is what the format requires; V5 is the current metadata.
        let options = IpcWriteOptions::try_new(8, false, MetadataVersion::V5).unwrap_or_default();
        IpcWriter {
            options,
            context: IpcWriteContext::default(),
        }
    }

    pub(super) fn schema(&mut self, schema: &Schema) -> Result<Vec<u8>, LinkError> {
        let mut tracker = DictionaryTracker::new(false);
        let encoded = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
            schema,
            &mut tracker,
            &self.options,
        );
        let mut out = Vec::new();
        write_message(&mut out, encoded, &self.options)?;
        Ok(out)
    }

    /// The batch's dictionaries (if any) then the batch, as one byte string.
    pub(super) fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, LinkError> {
        // A fresh tracker per batch: every block (or part sent alone) carries its own
        // dictionaries, so the parent can decode each alone. Dictionary ids are assigned
        // while encoding the schema, so a schema with dictionaries is encoded (and dropped)
        // first.
        let mut tracker = DictionaryTracker::new(false);
        if batch
            .schema_ref()
            .fields()
            .iter()
            .any(|f| has_dictionary(f.data_type()))
        {
            IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
                batch.schema_ref(),
                &mut tracker,
                &self.options,
            );
        }
        let (dictionaries, encoded) = IpcDataGenerator::default().encode(
            batch,
            &mut tracker,
            &self.options,
            &mut self.context,
        )?;
        // Sized once (each message: an 8-byte prefix, metadata and body, each padded to 8):
        // growing the buffer was 5% of a TLA's profile while it encoded a whole fleet.
        let size = dictionaries
            .iter()
            .chain([&encoded])
            .map(|e| 8 + e.ipc_message.len() + 7 + e.arrow_data.len() + 7)
            .sum();
        let mut out = Vec::with_capacity(size);
        for d in dictionaries {
            write_message(&mut out, d, &self.options)?;
        }
        write_message(&mut out, encoded, &self.options)?;
        Ok(out)
    }
}

/// Batches (of one schema) as the bytes of [`IpcRows::Bytes`](crate::link::wire::IpcRows):
/// their rows as one record batch, for rows encoded as a frame is serialized.
pub(crate) fn ipc_rows(batches: &[RecordBatch]) -> Result<Vec<u8>, LinkError> {
    match batches {
        [] => Err(LinkError::Encode("no rows to encode".into())),
        [one] => IpcWriter::new().batch(one),
        [first, ..] => IpcWriter::new().batch(&concat_batches(first.schema_ref(), batches)?),
    }
}

pub(super) fn has_dictionary(t: &DataType) -> bool {
    match t {
        DataType::Dictionary(..) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
        DataType::RunEndEncoded(a, b) => {
            has_dictionary(a.data_type()) || has_dictionary(b.data_type())
        }
        _ => false,
    }
}

/// One IPC message: its metadata (verified flatbuffer) and body.
struct RawMessage<'a> {
    meta: &'a [u8],
    body: Buffer,
}

/// Splits `bytes` into IPC messages, checking every length against what is there.
fn split_messages(bytes: &[u8]) -> Result<Vec<RawMessage<'_>>, LinkError> {
    const CONTINUATION: u32 = 0xFFFF_FFFF;
    let word = |pos: usize| -> Result<u32, LinkError> {
        bytes
            .get(pos..pos + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| LinkError::Decode("Arrow IPC message truncated".into()))
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let mut len = word(pos)?;
        pos += 4;
        if len == CONTINUATION {
            len = word(pos)?;
            pos += 4;
        }
        if len == 0 {
            break; // end of stream
        }
        let meta = bytes
            .get(pos..pos.saturating_add(len as usize))
            .ok_or_else(|| LinkError::Decode("Arrow IPC metadata truncated".into()))?;
        pos += len as usize;
        let message = root_as_message(meta)
            .map_err(|e| LinkError::Decode(format!("Arrow IPC metadata: {e}")))?;
        let body_len = usize::try_from(message.bodyLength())
            .ok()
            .filter(|&l| l <= bytes.len() - pos)
            .ok_or_else(|| LinkError::Decode("Arrow IPC body truncated".into()))?;
        // Each body in an allocation of its own, without the metadata: the arrays read from
        // it keep it alive as long as the part is held, and for a part of one machine the
        // metadata (a field node and buffers per column) can be larger than the rows.
        out.push(RawMessage {
            meta,
            body: Buffer::from(&bytes[pos..pos + body_len]),
        });
        pos += body_len;
    }
    Ok(out)
}

/// Runs Arrow's IPC reader, which is not hardened against hostile input (it panics on some
/// malformed metadata), turning a panic into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, LinkError>) -> Result<T, LinkError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(LinkError::Decode(
            "malformed Arrow IPC data (the reader gave up)".into(),
        ))
    })
}

pub(super) fn decode_schema(bytes: &[u8]) -> Result<SchemaRef, LinkError> {
    guarded(|| {
        let messages = split_messages(bytes)?;
        let [m] = messages.as_slice() else {
            return Err(LinkError::Decode(format!(
                "a schema is one Arrow IPC message, got {}",
                messages.len()
            )));
        };
        let schema = root_as_message(m.meta)
            .ok()
            .and_then(|msg| msg.header_as_schema())
            .ok_or_else(|| LinkError::Decode("Arrow IPC message is not a schema".into()))?;
        Ok(Arc::new(fb_to_schema(schema)))
    })
}

pub(super) fn decode_batch(bytes: &[u8], schema: &SchemaRef) -> Result<RecordBatch, LinkError> {
    guarded(|| {
        let mut dictionaries: HashMap<i64, ArrayRef> = HashMap::new();
        let mut batch = None;
        for m in split_messages(bytes)? {
            let msg = root_as_message(m.meta)
                .map_err(|e| LinkError::Decode(format!("Arrow IPC metadata: {e}")))?;
            let version = msg.version();
            match msg.header_type() {
                MessageHeader::DictionaryBatch => {
                    let d = msg.header_as_dictionary_batch().ok_or_else(|| {
                        LinkError::Decode("Arrow IPC dictionary without header".into())
                    })?;
                    read_dictionary(&m.body, d, schema, &mut dictionaries, &version)?;
                }
                MessageHeader::RecordBatch if batch.is_none() => {
                    let b = msg.header_as_record_batch().ok_or_else(|| {
                        LinkError::Decode("Arrow IPC record batch without header".into())
                    })?;
                    batch = Some(read_record_batch(
                        &m.body,
                        b,
                        schema.clone(),
                        &dictionaries,
                        None,
                        &version,
                    )?);
                }
                other => {
                    return Err(LinkError::Decode(format!(
                        "unexpected Arrow IPC message {other:?} in rows"
                    )))
                }
            }
        }
        let batch =
            batch.ok_or_else(|| LinkError::Decode("the rows hold no record batch".into()))?;
        if batch.schema_ref() != schema {
            return Err(LinkError::Protocol(
                "rows do not have the table's schema".into(),
            ));
        }
        Ok(batch)
    })
}

/// Rows as a frame holds them (a part's or a block's), as batches of `schema`: the bytes
/// decoded, or the batches of a frame handed over in process, never serialized.
pub(super) fn decode_rows(
    rows: IpcRows,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>, LinkError> {
    match rows {
        IpcRows::Bytes(bytes) => Ok(vec![decode_batch(&bytes, schema)?]),
        IpcRows::Received(bytes) => Ok(vec![decode_batch(bytes.as_slice(), schema)?]),
        IpcRows::Batches(batches) => {
            if batches.iter().any(|b| b.schema_ref() != schema) {
                return Err(LinkError::Protocol(
                    "rows do not have the table's schema".into(),
                ));
            }
            Ok(batches)
        }
    }
}

/// Rows of a batch in row format, sorted: a multiset to compare regardless of order.
#[cfg(test)]
pub(super) fn sorted_rows(batch: &RecordBatch) -> Vec<Vec<u8>> {
    let fields = batch
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let conv = RowConverter::new(fields).expect("row converter");
    let rows = conv.convert_columns(batch.columns()).expect("rows");
    let mut v: Vec<Vec<u8>> = rows.iter().map(|r| r.data().to_vec()).collect();
    v.sort();
    v
}
