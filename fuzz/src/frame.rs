//! Target `frame`: bytes on a link, as a parent reads them from a child (and a child from a
//! parent) — `link::frame::read_frame` on the stream, `decode_frame` (codec byte,
//! LZ4/zstd decompression bounded by the limit, postcard), and for generation frames
//! `link::diff::LinkDecoder::apply` (Arrow IPC schemas and rows, diffs against held parts).
//!
//! Inputs start from real frames: small generations of every column type the table model
//! has (plus a dictionary column), encoded by the real `LinkEncoder` (full, unchanged and
//! diff parts) with each codec, and hello/request/probe/advert frames. Then: byte mutations
//! of whole streams, structured mutations of generation frames re-encoded (diff indexes out
//! of range or unsorted, IPC bytes of one part in another, mutated schemas, duplicate
//! tables and parts, extreme times), lying length prefixes, compression bombs, random
//! bytes. Oracle: an unmutated stream decodes and applies without error.
//!
//! The decompression limit is [`MAX_FRAME_BYTES`]; the run's RSS bound checks nothing
//! allocates far beyond it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use query_actors::generation::{GenTable, Generation, Part, SourceStamp};
use query_actors::link::diff::{LinkDecoder, LinkEncoder};
use query_actors::link::frame::{
    decode_frame, encode_frame, encode_zstd_frame_unsized, read_frame, Codec,
};
use query_actors::link::wire::{
    Advert, GenerationFrame, Listing, PartId, PartRows, PatchValues, Sources, ToChild, ToParent,
    LINK_VERSION,
};
use rand::rngs::SmallRng;
use rand::Rng;

use crate::mutate::mutate;
use crate::runner::{Outcome, Target};

/// The frame and decompression limit the fuzzed decoder is given (a node's configured
/// limit; the default is 1 GiB, too much to fuzz millions of inputs with).
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// Flags in an input's first byte (never mutated).
const PRIME: u8 = 1; // apply the clean full frame first, so diff frames have parts to hit
const VALID: u8 = 2; // the stream is unmutated: every frame must decode and apply
const TO_CHILD: u8 = 4; // frames a child reads (hello, request, probe)

const CODECS: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd];

pub struct FrameTarget {
    /// The generation frames of the corpus, in order: the first is full, the rest diffs.
    frames: Vec<GenerationFrame>,
    /// Whole valid streams: generation frames with each codec, other messages.
    to_parent_streams: Vec<Vec<u8>>,
    to_child_streams: Vec<Vec<u8>>,
    /// Frames that decompress far past [`MAX_FRAME_BYTES`].
    bombs: Vec<Vec<u8>>,
    rt: tokio::runtime::Runtime,
}

impl FrameTarget {
    pub fn new() -> Result<Self, String> {
        let generations = corpus_generations();
        let wanted: BTreeSet<String> = ["sys".to_string(), "dict".to_string()].into();
        let mut enc = LinkEncoder::new();
        let mut frames = Vec::new();
        for g in &generations {
            let f = enc
                .encode(g, &wanted, 3, 1)
                .map_err(|e| format!("encode: {e}"))?;
            // As a parent receives it: every part's rows as bytes.
            let wire = encode_frame(&ToParent::Generation(f), Codec::None)
                .map_err(|e| format!("encode: {e}"))?;
            match decode_frame(&wire[4..], MAX_FRAME_BYTES) {
                Ok(ToParent::Generation(f)) => frames.push(f),
                other => return Err(format!("frame does not come back: {other:?}")),
            }
        }
        let kinds: BTreeSet<&str> = frames
            .iter()
            .flat_map(|f| f.tables.iter().flat_map(|t| t.parts.iter()))
            .map(|p| match p.rows {
                PartRows::Full(_) => "full",
                PartRows::InBlock(_) => "block",
                PartRows::Unchanged => "unchanged",
                PartRows::Diff { .. } => "diff",
                PartRows::Patch { .. } => "patch",
            })
            .collect();
        if kinds.len() != 4 {
            return Err(format!("the corpus lacks a kind of part: {kinds:?}"));
        }
        let enc_frame = |m: &ToParent, c: Codec| encode_frame(m, c).map_err(|e| e.to_string());
        let mut to_parent_streams = Vec::new();
        for c in CODECS {
            let mut s = Vec::new();
            for f in &frames {
                s.extend(enc_frame(&ToParent::Generation(f.clone()), c)?);
            }
            to_parent_streams.push(s);
            let mut s = enc_frame(
                &ToParent::Hello {
                    node: "edge-1".into(),
                    role: "edge".into(),
                    version: LINK_VERSION,
                },
                c,
            )?;
            s.extend(enc_frame(&ToParent::Generation(frames[0].clone()), c)?);
            to_parent_streams.push(s);
            if c == Codec::Zstd {
                // A full copy as a TLA sends it to a SQL node: not sized first.
                to_parent_streams.push(
                    encode_zstd_frame_unsized(&ToParent::Generation(frames[0].clone()))
                        .map_err(|e| e.to_string())?,
                );
            }
            let mut s = enc_frame(
                &ToParent::Advert(Advert {
                    node: "tla".into(),
                    role: "tla".into(),
                    version: LINK_VERSION,
                    clusters: 1000,
                    machines: 70_000,
                    round: 12,
                }),
                c,
            )?;
            s.extend(enc_frame(
                &ToParent::Refused {
                    message: "version".into(),
                },
                c,
            )?);
            to_parent_streams.push(s);
        }
        let mut to_child_streams = Vec::new();
        for c in CODECS {
            let child = |m: &ToChild| encode_frame(m, c).map_err(|e| e.to_string());
            let mut s = child(&ToChild::Hello {
                parent: "proxy-1".into(),
                version: LINK_VERSION,
            })?;
            s.extend(child(&ToChild::Request {
                tables: vec!["sys".into(), "load_info".into(), String::new()],
            })?);
            to_child_streams.push(s);
            to_child_streams.push(child(&ToChild::Probe {
                version: LINK_VERSION,
            })?);
        }
        let big = ToParent::Generation(GenerationFrame {
            tables: Vec::new(),
            errors: vec![("x".into(), "y".repeat(16 << 20))],
            ..frames[0].clone()
        });
        let mut bombs = Vec::new();
        for c in [Codec::Lz4, Codec::Zstd] {
            bombs.push(encode_frame(&big, c).map_err(|e| e.to_string())?);
        }
        // zstd streamed: no content size in the header, so the decoder must stop by itself.
        let raw = postcard_of(&big)?;
        let mut z = zstd::stream::write::Encoder::new(Vec::new(), 1).map_err(|e| e.to_string())?;
        z.write_all(&raw).map_err(|e| e.to_string())?;
        let payload = z.finish().map_err(|e| e.to_string())?;
        let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(Codec::Zstd.id());
        frame.extend(payload);
        bombs.push(frame);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(FrameTarget {
            frames,
            to_parent_streams,
            to_child_streams,
            bombs,
            rt,
        })
    }

    /// A generation frame with structured faults, re-encoded with a random codec.
    fn structured(&self, rng: &mut SmallRng) -> Vec<u8> {
        let mut f = self.frames[rng.random_range(0..self.frames.len())].clone();
        for _ in 0..rng.random_range(1..4) {
            mutate_frame(rng, &mut f, &self.frames);
        }
        let codec = CODECS[rng.random_range(0..3)];
        encode_frame(&ToParent::Generation(f), codec).unwrap_or_default()
    }

    fn decode_stream(&self, flags: u8, mut stream: &[u8]) -> Result<(), String> {
        let mut dec = LinkDecoder::new();
        if flags & PRIME != 0 {
            dec.apply(self.frames[0].clone())
                .map_err(|e| format!("the clean full frame was refused: {e}"))?;
        }
        let mut first_error = None;
        let mut note = |e: String| {
            first_error.get_or_insert(e);
        };
        loop {
            let body = match self.rt.block_on(read_frame(&mut stream, MAX_FRAME_BYTES)) {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => {
                    note(e.to_string());
                    break;
                }
            };
            if flags & TO_CHILD != 0 {
                if let Err(e) = decode_frame::<ToChild>(&body, MAX_FRAME_BYTES) {
                    note(e.to_string());
                }
                continue;
            }
            match decode_frame::<ToParent>(&body, MAX_FRAME_BYTES) {
                Ok(ToParent::Generation(f)) => {
                    // Keep going after an error, as a fresh link would: more of the input
                    // reaches the decoder.
                    if let Err(e) = dec.apply(f) {
                        note(e.to_string());
                    }
                }
                Ok(_) => {}
                Err(e) => note(e.to_string()),
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Target for FrameTarget {
    fn name(&self) -> &'static str {
        "frame"
    }

    fn generate(&self, rng: &mut SmallRng) -> Vec<u8> {
        let pick = |rng: &mut SmallRng, v: &[Vec<u8>]| v[rng.random_range(0..v.len())].clone();
        let (flags, stream) = match rng.random_range(0..100) {
            0..4 => (VALID, pick(rng, &self.to_parent_streams)),
            4..6 => (VALID | TO_CHILD, pick(rng, &self.to_child_streams)),
            // Byte mutations; mostly uncompressed, so the junk reaches postcard and Arrow.
            6..40 => {
                let mut s = if rng.random_bool(0.7) {
                    self.to_parent_streams[rng.random_range(0..3)].clone()
                } else {
                    pick(rng, &self.to_parent_streams)
                };
                mutate(rng, &mut s, 6, &[]);
                (PRIME * u8::from(rng.random_bool(0.5)), s)
            }
            40..46 => {
                let mut s = pick(rng, &self.to_child_streams);
                mutate(rng, &mut s, 6, &[]);
                (TO_CHILD, s)
            }
            46..82 => (PRIME * u8::from(rng.random_bool(0.8)), self.structured(rng)),
            // Length prefixes that lie.
            82..88 => {
                let mut s = pick(rng, &self.to_parent_streams);
                let len: u32 = match rng.random_range(0..4) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => MAX_FRAME_BYTES as u32 + 1,
                    _ => rng.random_range(1..(s.len() as u32 * 2)),
                };
                s[..4].copy_from_slice(&len.to_be_bytes());
                (0, s)
            }
            88..92 => {
                let mut s = pick(rng, &self.bombs);
                if rng.random_bool(0.3) {
                    mutate(rng, &mut s, 2, &[]);
                }
                (0, s)
            }
            // Random bytes behind a plausible header.
            _ => {
                let n = rng.random_range(0..600);
                let mut s = ((n + 1) as u32).to_be_bytes().to_vec();
                s.push(rng.random_range(0..4));
                s.extend((0..n).map(|_| rng.random::<u8>()));
                (TO_CHILD * u8::from(rng.random_bool(0.2)), s)
            }
        };
        let mut input = Vec::with_capacity(stream.len() + 1);
        input.push(flags);
        input.extend(stream);
        input
    }

    fn run(&mut self, input: &[u8]) -> Outcome {
        let Some((&flags, stream)) = input.split_first() else {
            return Outcome::Refused;
        };
        match (self.decode_stream(flags, stream), flags & VALID != 0) {
            (Ok(()), _) => Outcome::Accepted,
            (Err(e), true) => Outcome::Violation(format!("a valid stream was refused: {e}")),
            (Err(_), false) => Outcome::Refused,
        }
    }
}

fn postcard_of(m: &ToParent) -> Result<Vec<u8>, String> {
    // The frame format's serialization, without compression.
    let frame = encode_frame(m, Codec::None).map_err(|e| e.to_string())?;
    Ok(frame[5..].to_vec())
}

fn mutate_frame(rng: &mut SmallRng, f: &mut GenerationFrame, all: &[GenerationFrame]) {
    let any_bytes = |rng: &mut SmallRng| -> Vec<u8> {
        let g = &all[rng.random_range(0..all.len())];
        let parts: Vec<&[u8]> = g
            .tables
            .iter()
            .flat_map(|t| t.parts.iter())
            .filter_map(|p| match &p.rows {
                PartRows::Full(rows) => rows.bytes(),
                PartRows::Diff { added: b, .. } | PartRows::Patch { added: b, .. } => Some(b),
                PartRows::Unchanged | PartRows::InBlock(_) => None,
            })
            .chain(
                g.tables
                    .iter()
                    .flat_map(|t| t.blocks.iter().filter_map(|b| b.bytes())),
            )
            .chain(
                g.tables
                    .iter()
                    .flat_map(|t| t.patches.iter().map(|p| &p.values[..])),
            )
            .chain(g.tables.iter().filter_map(|t| t.schema.as_deref()))
            .collect();
        parts
            .get(rng.random_range(0..parts.len().max(1)))
            .map(|b| b.to_vec())
            .unwrap_or_default()
    };
    if f.tables.is_empty() {
        f.tables = all[0].tables.clone();
    }
    let t = rng.random_range(0..f.tables.len());
    let table = &mut f.tables[t];
    let p = rng.random_range(0..table.parts.len().max(1));
    match rng.random_range(0..15) {
        0 => f.full = !f.full,
        1 => {
            f.sealed_at_ms = [i64::MIN, i64::MAX, -1, 0][rng.random_range(0..4)];
        }
        2 => {
            if let Some(part) = table.parts.get_mut(p) {
                part.sources = Sources::Stamped(vec![(
                    "s".into(),
                    [i64::MIN, i64::MAX][rng.random_range(0..2)],
                )]);
            }
        }
        // A table's blocks: a block's bytes mutated or swapped for other IPC bytes, one
        // more or one fewer, none.
        14 => {
            let b = rng.random_range(0..table.blocks.len().max(1));
            match rng.random_range(0..4) {
                0 => {
                    if let Some(block) = table.blocks.get_mut(b) {
                        let mut bytes = block.bytes().map(<[u8]>::to_vec).unwrap_or_default();
                        mutate(rng, &mut bytes, 4, &[]);
                        *block = bytes.into();
                    }
                }
                1 => table.blocks.push(any_bytes(rng).into()),
                2 => {
                    if b < table.blocks.len() {
                        table.blocks.remove(b);
                    }
                }
                _ => table.blocks.clear(),
            }
        }
        // Only the changes listed: parts gone that are not held, or listed too.
        12 => {
            let gone = (0..rng.random_range(0..3))
                .map(|_| ["", "10.0.0.1", "10.0.0.9", "m0"][rng.random_range(0..4)].to_string())
                .collect();
            table.listing = Listing::Changes { gone };
        }
        // Sources as held (for a part that may not be), or named without a time.
        13 => {
            if let Some(part) = table.parts.get_mut(p) {
                part.sources = [Sources::Held, Sources::Named(vec!["nowhere".into()])]
                    [rng.random_range(0..2)]
                .clone();
            }
            let back = [i64::MIN, i64::MAX, 0][rng.random_range(0..3)];
            match rng.random_range(0..4) {
                0 => f.stamps.new.push(("s".into(), back)),
                // A position that may be past the sources held, maybe without its time.
                1 => {
                    f.stamps.moved.push(rng.random_range(0..4));
                    if rng.random_bool(0.8) {
                        f.stamps.moved_back.push(back);
                    }
                }
                2 => f.stamps.gone.push("10.0.0.1".into()),
                _ => {}
            }
        }
        3 => {
            let dup = table.clone();
            f.tables.push(dup);
        }
        4 => {
            if let Some(part) = table.parts.get(p).cloned() {
                table.parts.push(part);
            }
        }
        5 => {
            let mut s = table.schema.clone().unwrap_or_else(|| any_bytes(rng));
            mutate(rng, &mut s, 4, &[]);
            table.schema = Some(s);
        }
        6 => table.schema = None,
        7 => {
            if let Some(part) = table.parts.get_mut(p) {
                part.key = match rng.random_range(0..5) {
                    0 => PartId::Held(rng.random_range(0..3)),
                    1 => PartId::Held(u32::MAX),
                    k => PartId::Key(["", "10.0.0.9", "m0"][k - 2].to_string()),
                };
            }
        }
        // The rows of a part: mutated, swapped for other IPC bytes, another kind.
        8 | 9 => {
            if let Some(part) = table.parts.get_mut(p) {
                let mut bytes = any_bytes(rng);
                if rng.random_bool(0.7) {
                    mutate(rng, &mut bytes, 4, &[]);
                }
                part.rows = match rng.random_range(0..5) {
                    0 => PartRows::Full(bytes.into()),
                    4 => PartRows::InBlock([0, 1, 2, 3, u32::MAX][rng.random_range(0..5)]),
                    1 => PartRows::Unchanged,
                    2 => {
                        table.patches.push(PatchValues {
                            columns: vec![(
                                rng.random_range(0..4),
                                [0, 1, 2, 3, 8][rng.random_range(0..5)],
                            )],
                            rows: [0, 1, 2, 7, u32::MAX][rng.random_range(0..5)],
                            values: bytes,
                        });
                        PartRows::Patch {
                            rows: vec![rng.random_range(0..4); rng.random_range(0..3)],
                            values: Some(rng.random_range(0..table.patches.len() as u32 + 1)),
                            removed: vec![],
                            added: vec![],
                        }
                    }
                    _ => PartRows::Diff {
                        removed: vec![],
                        added: bytes,
                    },
                };
            }
        }
        // Removed indexes: out of range, unsorted, duplicated, many.
        10 => {
            if let Some(part) = table.parts.get_mut(p) {
                let removed: Vec<u32> = match rng.random_range(0..4) {
                    0 => vec![u32::MAX],
                    1 => vec![2, 1],
                    2 => vec![0, 0],
                    _ => (0..rng.random_range(0..50_000)).collect(),
                };
                let added = match &part.rows {
                    PartRows::Diff { added, .. } | PartRows::Patch { added, .. } => added.clone(),
                    PartRows::Full(rows) => match rows.bytes() {
                        Some(b) => b.to_vec(),
                        None => any_bytes(rng),
                    },
                    PartRows::Unchanged | PartRows::InBlock(_) => any_bytes(rng),
                };
                part.rows = PartRows::Diff { removed, added };
            }
        }
        _ => {
            f.tables[t].name = ["sys", "dict", "", "other"][rng.random_range(0..4)].to_string();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The corpus: small generations of every column type, changing so the encoder emits full,
// unchanged and diff parts.
// ---------------------------------------------------------------------------------------

fn sys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("machine_ip", DataType::Utf8, false),
        Field::new("value", DataType::Int64, false),
        Field::new("load", DataType::Float64, true),
        Field::new("up", DataType::Boolean, true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]))
}

fn dict_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "d",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ),
        Field::new("n", DataType::Int64, false),
    ]))
}

fn sys_batch(schema: &SchemaRef, rows: &[(&str, i64)]) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(Float64Array::from_iter(
            rows.iter()
                .map(|r| (r.1 % 3 != 0).then_some(r.1 as f64 / 7.0)),
        )),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| (r.1 % 5 != 0).then_some(r.1 % 2 == 0)),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter(
                rows.iter()
                    .map(|r| (r.1 % 4 != 0).then_some(1_700_000_000_000 + r.1)),
            )
            .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema.clone(), cols)
        .unwrap_or_else(|_| RecordBatch::new_empty(schema.clone()))
}

fn dict_batch(schema: &SchemaRef, values: &[&str]) -> RecordBatch {
    let d: DictionaryArray<Int32Type> = values.iter().copied().collect();
    let n = Int64Array::from_iter_values((0..values.len() as i64).map(|i| i * 10));
    RecordBatch::try_new(schema.clone(), vec![Arc::new(d), Arc::new(n)])
        .unwrap_or_else(|_| RecordBatch::new_empty(schema.clone()))
}

fn corpus_generations() -> Vec<Generation> {
    let s = sys_schema();
    let ds = dict_schema();
    let t0 = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
    // Every source publishes again each round (the frames' source times change).
    let part = |key: &str, batch: RecordBatch, round: u64| {
        Part::new(
            key.into(),
            batch,
            vec![SourceStamp {
                source: key.into(),
                published_at: t0 + Duration::from_millis(round * 900),
            }],
        )
    };
    let rounds: [[&[(&str, i64)]; 3]; 4] = [
        [&[("a", 1), ("b", 2), ("c", 3)], &[("d", 4)], &[]],
        [&[("a", 1), ("b", 2), ("c", 3)], &[("d", 5)], &[("e", 6)]],
        [
            &[("a", 1), ("c", 3), ("x", 9), ("y", 10)],
            &[("d", 5)],
            &[("e", 6)],
        ],
        [
            &[("c", 3), ("a", 1), ("x", 9), ("y", 10)],
            &[("d", 5), ("d", 5)],
            &[],
        ],
    ];
    let dicts: [&[&str]; 4] = [&["x", "y", "x"], &["x", "y", "x"], &["z"], &["z", "z", "q"]];
    rounds
        .iter()
        .zip(dicts)
        .enumerate()
        .map(|(i, (parts, d))| {
            let mut tables = BTreeMap::new();
            tables.insert(
                "sys".to_string(),
                GenTable {
                    schema: s.clone(),
                    parts: {
                        let mut parts: Vec<Arc<Part>> = parts
                            .iter()
                            .enumerate()
                            .map(|(m, rows)| {
                                Arc::new(part(&format!("m{m}"), sys_batch(&s, rows), i as u64))
                            })
                            .collect();
                        // The last round lists its parts in another order: every part is
                        // listed, unchanged ones too (`Listing::Every`).
                        if i == 3 {
                            parts.reverse();
                        }
                        parts
                    },
                },
            );
            tables.insert(
                "dict".to_string(),
                GenTable {
                    schema: ds.clone(),
                    parts: vec![Arc::new(part("m0", dict_batch(&ds, d), i as u64))],
                },
            );
            Generation {
                id: i as u64 + 1,
                round: i as u64 + 100,
                tla_round: i as u64 + 100,
                sealed_at: t0 + Duration::from_secs(i as u64),
                tables,
                errors: BTreeMap::new(),
                machines: 3,
                clusters: 1,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_streams_decode_and_bombs_are_refused() {
        let mut t = FrameTarget::new().expect("corpus");
        for s in &t.to_parent_streams.clone() {
            let mut input = vec![VALID];
            input.extend(s);
            assert_eq!(t.run(&input), Outcome::Accepted);
        }
        for s in &t.to_child_streams.clone() {
            let mut input = vec![VALID | TO_CHILD];
            input.extend(s);
            assert_eq!(t.run(&input), Outcome::Accepted);
        }
        for b in &t.bombs.clone() {
            let err = t.decode_stream(0, b).expect_err("a bomb");
            assert!(err.contains("exceeds the limit"), "{err}");
        }
    }
}
