//! Frames on a link's byte stream, and the serialization and compression of what they carry.
//!
//! A frame is a `u32` big-endian length of the rest, one byte naming the [`Codec`], then the
//! message serialized with postcard and compressed by that codec:
//!
//! ```text
//! +----------------+-------+------------------------------------+
//! | length (u32 BE)| codec | payload (postcard, then compressed) |
//! +----------------+-------+------------------------------------+
//!                  <---------------- length bytes --------------->
//! ```
//!
//! A zstd payload is one zstd frame that records its decompressed size, or, for a frame
//! compressed before its size was known ([`encode_generation`]), a zstd skippable frame
//! holding that size (u64 little-endian) followed by zstd frames of [`ZSTD_CHUNK_BYTES`]
//! each (the last one shorter), each recording its size: any zstd decoder reads them as
//! one stream, and a receiver decompresses them on every core at once.
//!
//! Postcard: a compact serde binary format (varints, no field names) that builds in seconds
//! and has no dependencies beyond serde. The Arrow IPC fields of [`super::wire`] serialize as
//! byte strings, so they cost a memcpy, not one call per byte.
//!
//! Everything read here comes from a peer and is untrusted: sizes are checked before
//! anything is allocated, decompression stops at the caller's limit, and garbage yields a
//! [`LinkError`], never a panic.

use std::io::Read;

use datafusion::arrow::buffer::Buffer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::wire::{GenerationFrame, ToParent};
use super::LinkError;

/// The largest frame, and the largest decompressed payload, a node accepts by default. The
/// first frame from a TLA to a SQL node is a full copy of every requested table of the
/// fleet: for 70,000 simulated machines' six tables, 179 MB uncompressed since the parts'
/// rows travel in blocks (448 MB as a message per part; BENCHMARKS.md, `tla-merge`).
/// 1 GiB leaves room up to about 400,000 such machines without letting a broken peer make
/// a node allocate without bound.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 30;

/// Serialized size from which a zstd frame is compressed as it is serialized. Below it the
/// message is serialized whole, then compressed: postcard makes a write call per field,
/// and through a writer those calls cost a steady diff frame of 70,000 machines (7 MB)
/// 7% more time to encode (`tla-merge`), while a full copy of them (448 MB as a message per
/// part, then) took a third of the time streamed.
const STREAM_FROM_BYTES: usize = 32 << 20;

/// Rows of parts new to the parent ([`IpcRows::Batches`](super::wire::IpcRows)) from which
/// a generation's frame is compressed without being sized first ([`encode_generation`]).
/// Below it (a cluster's full copy of 70 machines, a diff frame with a few new ones) the
/// rows are encoded before, held while the frame is sized and serialized whole: cheaper
/// than serializing through a writer, and little to hold.
const UNSIZED_FROM_LATE_ROWS: usize = 16_384;

/// Serialized bytes per zstd frame of a payload compressed before its size was known: the
/// frames are independent, so a receiver decompresses a full copy (179 MB at 70,000
/// machines; 448 MB, one thread's half second, as a message per part) on every core. At
/// [`ZSTD_LEVEL`] the window is 512 KiB either way, so the cuts cost next to nothing in
/// size.
const ZSTD_CHUNK_BYTES: usize = 8 << 20;

/// The least average size of a chunked payload's zstd frames for them to be decompressed
/// apart ([`ZSTD_CHUNK_BYTES`] is 8 times this); below it, in one pass.
const MIN_AVERAGE_FRAME: u64 = 1 << 20;

/// Bytes of the length prefix.
const LEN_BYTES: usize = 4;

/// The magic of the zstd skippable frame (0x184D2A50 to 0x184D2A5F are skippable) that
/// opens a zstd payload compressed before its size was known: 8 bytes follow, the
/// decompressed size of the rest (u64 little-endian).
const ZSTD_SIZE_MAGIC: u32 = 0x184D_2A5A;

/// Bytes of that skippable frame: magic, its length (8), the size.
const ZSTD_SIZE_FRAME_BYTES: usize = 16;

/// The zstd window of a frame compressed without knowing its size: zstd's own choice at
/// [`ZSTD_LEVEL`] for inputs of 256 KiB and more, set here so that receivers can allow it
/// whatever the size.
const ZSTD_UNSIZED_WINDOW_LOG: u32 = 19;

/// zstd level for [`Codec::Zstd`]: on link frames level 3 is only about 5% smaller and
/// 15-20% slower to compress (BENCHMARKS.md, `link-codec`).
const ZSTD_LEVEL: i32 = 1;

/// Largest zstd window a received frame may ask for (2^23 = 8 MiB), so a hostile frame
/// cannot make the decoder reserve the library's default of 128 MiB. Our encoder's windows
/// at [`ZSTD_LEVEL`] are far smaller. Smaller limits get smaller windows
/// ([`zstd_window_log`]).
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// zstd's smallest window (1 KiB).
const ZSTD_WINDOW_LOG_MIN: u32 = 10;

/// Below this many bytes a payload may inflate without regard to the ratio cap of
/// [`decode_small_frame`]: fixed headers make tiny payloads compress badly or expand, and
/// a few KiB cost nothing.
const INFLATION_FLOOR: u64 = 4096;

/// A zstd frame declaring more than this many times its size is decompressed by streaming
/// (growing as it goes) rather than into one buffer of the declared size. Link data
/// compresses about 10 times.
const ZSTD_TRUSTED_RATIO: u64 = 64;

/// LZ4 cannot expand data more than 255 times: a claimed size above that is a lie, refused
/// before it is allocated.
const LZ4_MAX_RATIO: usize = 255;

/// How a frame's payload is compressed.
///
/// The default is [`Codec::Zstd`] at level 1, chosen by measurement (BENCHMARKS.md,
/// `link-codec`: a simulated fleet, one part per machine, LZ4, zstd 1 and 3 and deflate 1
/// and 6 compared on the same frames). Compression turned out to be a few percent of a
/// link's CPU whichever codec: encoding and decoding the frame itself (diffs, Arrow IPC,
/// postcard) costs ten to twenty times more. zstd level 1 compresses about as fast as LZ4,
/// decompresses at well over 1 GB/s, and makes diff frames about a third smaller than LZ4's,
/// so it wins for links sending every interval. Level 3 saves about 5% more for 15-20% more
/// compression time. Deflate (flate2/miniz_oxide) is larger than zstd level 1 at level 1 and
/// about 15 times slower at level 6: not offered. [`Codec::Lz4`] (lz4_flex, pure Rust) stays
/// for links where decompression CPU is tighter than bandwidth. Both were already built as
/// arrow-ipc dependencies, so neither adds compile time.
///
/// In configuration files: `"none"`, `"lz4"`, `"zstd"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Uncompressed: for loopback links and tests.
    None,
    /// LZ4 block format, the uncompressed size first (u32 little-endian).
    Lz4,
    /// zstd level 1: a standard zstd frame that records its decompressed size, or a zstd
    /// skippable frame giving it before a zstd frame that does not (see the module).
    #[default]
    Zstd,
}

impl Codec {
    /// The byte that names the codec in a frame.
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zstd => 2,
        }
    }

    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::None),
            1 => Some(Codec::Lz4),
            2 => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// Compresses a serialized message.
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, LinkError> {
        match self {
            Codec::None => Ok(data.to_vec()),
            Codec::Lz4 => {
                // The block format's prefix is a u32: refuse rather than wrap around.
                if u32::try_from(data.len()).is_err() {
                    return Err(too_large(data.len(), u32::MAX as usize));
                }
                Ok(lz4_flex::block::compress_prepend_size(data))
            }
            Codec::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL)
                .map_err(|e| LinkError::Encode(format!("zstd: {e}"))),
        }
    }

    /// Decompresses a payload, refusing one that would exceed `max_bytes` once
    /// decompressed without allocating more than that.
    pub fn decompress(self, payload: &[u8], max_bytes: usize) -> Result<Vec<u8>, LinkError> {
        match self {
            Codec::None => {
                if payload.len() > max_bytes {
                    return Err(too_large(payload.len(), max_bytes));
                }
                Ok(payload.to_vec())
            }
            Codec::Lz4 => {
                let (size, block) = payload
                    .split_first_chunk::<4>()
                    .ok_or_else(|| LinkError::Decode("LZ4 payload shorter than its size".into()))?;
                let size = u32::from_le_bytes(*size) as usize;
                if size > max_bytes {
                    return Err(too_large(size, max_bytes));
                }
                if size > block.len().saturating_mul(LZ4_MAX_RATIO).saturating_add(16) {
                    return Err(LinkError::Decode(format!(
                        "LZ4 payload of {} bytes claims {size} bytes decompressed, more than LZ4 can expand",
                        block.len()
                    )));
                }
                let out = lz4_flex::block::decompress(block, size)
                    .map_err(|e| LinkError::Decode(format!("LZ4: {e}")))?;
                if out.len() != size {
                    return Err(LinkError::Decode(format!(
                        "LZ4 payload decompressed to {} bytes, its header says {size}",
                        out.len()
                    )));
                }
                Ok(out)
            }
            Codec::Zstd => {
                let (declared, payload, window_floor) = match zstd_size_frame(payload) {
                    Some((size, rest)) => (Some(size), rest, ZSTD_UNSIZED_WINDOW_LOG),
                    None => (
                        zstd::zstd_safe::get_frame_content_size(payload)
                            .map_err(|_| LinkError::Decode("zstd: bad frame header".into()))?,
                        payload,
                        ZSTD_WINDOW_LOG_MIN,
                    ),
                };
                match declared {
                    Some(size) if size > max_bytes as u64 => Err(LinkError::FrameTooLarge {
                        size,
                        limit: max_bytes as u64,
                    }),
                    // The usual case (our encoder records the size): one allocation, one
                    // pass, about three times faster than streaming. Only for plausible
                    // ratios, so a tiny frame cannot reserve the whole limit.
                    Some(size)
                        if size <= (payload.len() as u64).saturating_mul(ZSTD_TRUSTED_RATIO) =>
                    {
                        match sized_frames(payload, size) {
                            Some(frames) if frames.len() > 1 => {
                                zstd_frames(frames, size as usize, window_floor)
                            }
                            _ => zstd_bulk(payload, size as usize, window_floor),
                        }
                    }
                    _ => zstd_stream(payload, max_bytes),
                }
            }
        }
    }
}

/// The size a zstd payload's opening skippable frame gives ([`ZSTD_SIZE_MAGIC`]), and the
/// rest of the payload; `None` for a payload that does not open with one.
fn zstd_size_frame(payload: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = payload.split_at_checked(ZSTD_SIZE_FRAME_BYTES)?;
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    if word(0) != ZSTD_SIZE_MAGIC || word(4) != 8 {
        return None;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&head[8..]);
    Some((u64::from_le_bytes(size), rest))
}

/// One-shot zstd decompression of a frame that declares `size` bytes; more is an error.
/// Its window may be as large as the size, or `window_floor` (log 2).
fn zstd_bulk(payload: &[u8], size: usize, window_floor: u32) -> Result<Vec<u8>, LinkError> {
    let zerr = |e: std::io::Error| LinkError::Decode(format!("zstd: {e}"));
    let mut d = zstd::bulk::Decompressor::new().map_err(zerr)?;
    d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
        zstd_window_log(size).max(window_floor),
    ))
    .map_err(zerr)?;
    let out = d.decompress(payload, size).map_err(zerr)?;
    if out.len() != size {
        return Err(LinkError::Decode(format!(
            "zstd payload decompressed to {} bytes, its header says {size}",
            out.len()
        )));
    }
    Ok(out)
}

/// The zstd frames of `payload` with the size each records, if every one records its size
/// and together they make `size` (a chunked payload, [`ZSTD_CHUNK_BYTES`]); None otherwise
/// (one frame, or one that does not record its size: decompressed in one pass).
///
/// Frames of a MiB or more on average, as ours are: past `size / MIN_AVERAGE_FRAME + 1`
/// frames the walk stops (a payload of many tiny or empty frames would cost a list entry
/// and a decompressor each).
fn sized_frames(mut payload: &[u8], size: u64) -> Option<Vec<(&[u8], usize)>> {
    let most = usize::try_from(size / MIN_AVERAGE_FRAME + 1).ok()?;
    let mut frames = Vec::new();
    let mut total = 0u64;
    while !payload.is_empty() {
        if frames.len() == most {
            return None;
        }
        let len = zstd::zstd_safe::find_frame_compressed_size(payload).ok()?;
        let (frame, rest) = payload.split_at_checked(len)?;
        let n = zstd::zstd_safe::get_frame_content_size(frame).ok()??;
        total = total.checked_add(n).filter(|t| *t <= size)?;
        frames.push((frame, usize::try_from(n).ok()?));
        payload = rest;
    }
    (total == size).then_some(frames)
}

/// Decompresses `frames` (each with the size it records, `size` in all) into one buffer,
/// each frame into its own stretch of it: on every core when there is enough
/// ([`crate::threads`]). A frame that gives more or fewer bytes than it records is an
/// error.
fn zstd_frames(
    frames: Vec<(&[u8], usize)>,
    size: usize,
    window_floor: u32,
) -> Result<Vec<u8>, LinkError> {
    let zerr = |e: std::io::Error| LinkError::Decode(format!("zstd: {e}"));
    // Zeroed pages come fresh from the system, touched first by the thread that fills them.
    let mut out = vec![0u8; size];
    let mut items = Vec::with_capacity(frames.len());
    let mut rest = out.as_mut_slice();
    for (frame, n) in frames {
        let (mine, after) = std::mem::take(&mut rest).split_at_mut(n);
        items.push((frame, mine));
        rest = after;
    }
    crate::threads::map_weighted(
        items,
        |(_, out)| out.len() >> 10,
        |(frame, out)| -> Result<(), LinkError> {
            let mut d = zstd::bulk::Decompressor::new().map_err(zerr)?;
            d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                zstd_window_log(out.len()).max(window_floor),
            ))
            .map_err(zerr)?;
            let n = d.decompress_to_buffer(frame, out).map_err(zerr)?;
            if n != out.len() {
                return Err(LinkError::Decode(format!(
                    "zstd frame decompressed to {n} bytes, its header says {}",
                    out.len()
                )));
            }
            Ok(())
        },
    )
    .into_iter()
    .collect::<Result<(), _>>()?;
    Ok(out)
}

/// Streaming zstd decompression that stops one byte past `max_bytes`, growing its buffer as
/// data arrives: a small frame that claims gigabytes costs nothing.
fn zstd_stream(payload: &[u8], max_bytes: usize) -> Result<Vec<u8>, LinkError> {
    let zerr = |e: std::io::Error| LinkError::Decode(format!("zstd: {e}"));
    let mut dec = zstd::stream::read::Decoder::with_buffer(payload).map_err(zerr)?;
    dec.window_log_max(zstd_window_log(max_bytes))
        .map_err(zerr)?;
    let mut out = Vec::new();
    dec.take(max_bytes as u64 + 1)
        .read_to_end(&mut out)
        .map_err(zerr)?;
    if out.len() > max_bytes {
        return Err(too_large(out.len(), max_bytes));
    }
    Ok(out)
}

/// The window a frame of at most `max_bytes` needs: our encoder knows the size it
/// compresses and never uses a window above it, so a frame asking for more is hostile and
/// the decoder refuses it rather than reserving the window.
fn zstd_window_log(max_bytes: usize) -> u32 {
    let bits = usize::BITS - max_bytes.saturating_sub(1).leading_zeros();
    bits.clamp(ZSTD_WINDOW_LOG_MIN, ZSTD_WINDOW_LOG_MAX)
}

fn too_large(size: usize, limit: usize) -> LinkError {
    LinkError::FrameTooLarge {
        size: size as u64,
        limit: limit as u64,
    }
}

/// Serializes and compresses `msg` into a whole frame, length prefix included.
///
/// Uncompressed frames, and zstd frames of [`STREAM_FROM_BYTES`] or more, are serialized
/// straight into the frame or the compressor: a whole fleet's full copy was 1.58 GB
/// serialized at 250,000 machines when each part was a message (179 MB at 70,000 in
/// blocks, link version 9: `tla-merge`), and holding it once more before
/// compression set the sender's peak (BENCHMARKS.md, `fleet-big`). Sized first: the zstd
/// frame records its size, which the receiver checks against its limit before
/// decompressing, and a growing buffer would be copied over and over into freshly faulted
/// pages (a TLA's profile).
pub fn encode_frame<T: Serialize>(msg: &T, codec: Codec) -> Result<Vec<u8>, LinkError> {
    let err = |e: postcard::Error| LinkError::Encode(e.to_string());
    let size = postcard::experimental::serialized_size(msg).map_err(err)?;
    let header = |capacity: usize| {
        let mut frame = Vec::with_capacity(LEN_BYTES + 1 + capacity);
        frame.extend_from_slice(&[0; LEN_BYTES]);
        frame.push(codec.id());
        frame
    };
    let mut frame = match codec {
        Codec::None => postcard::to_extend(msg, header(size)).map_err(err)?,
        Codec::Zstd if size >= STREAM_FROM_BYTES => {
            serialize_into_zstd(msg, size, header(size / 8))?
        }
        Codec::Zstd | Codec::Lz4 => {
            let raw = postcard::to_extend(msg, Vec::with_capacity(size)).map_err(err)?;
            let payload = codec.compress(&raw)?;
            drop(raw);
            let mut frame = header(payload.len());
            frame.extend_from_slice(&payload);
            frame
        }
    };
    let rest = frame.len() - LEN_BYTES;
    let len = u32::try_from(rest).map_err(|_| too_large(rest, u32::MAX as usize))?;
    frame[..LEN_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// A generation for a parent as a whole frame ([`encode_frame`] of
/// [`ToParent::Generation`]). A zstd frame with many rows new to the parent (a full copy:
/// its blocks are encoded only as they are serialized) is compressed as it is serialized,
/// without being sized first, its payload opening with a skippable frame that gives the
/// decompressed size (see the module). Any other frame is sized first, its new parts
/// encoded before (once).
pub fn encode_generation(mut frame: GenerationFrame, codec: Codec) -> Result<Vec<u8>, LinkError> {
    let late_rows: usize = frame
        .late_rows()
        .iter()
        .flat_map(|b| b.iter())
        .map(|b| b.num_rows())
        .sum();
    if codec == Codec::Zstd && late_rows >= UNSIZED_FROM_LATE_ROWS {
        let msg = ToParent::Generation(frame);
        let ToParent::Generation(frame) = &msg else {
            unreachable!("just made")
        };
        // The blocks encoded on every core, a few chunks of rows ahead of serialization.
        let (encoded, _) =
            super::diff::with_rows_ahead(&frame.late_rows(), || encode_zstd_frame_unsized(&msg));
        return encoded;
    }
    frame.encode_late_rows()?;
    encode_frame(&ToParent::Generation(frame), codec)
}

/// A whole zstd frame of `msg`, compressed as it is serialized without being sized first:
/// the payload opens with a skippable frame that gives the decompressed size, then a zstd
/// frame per [`ZSTD_CHUNK_BYTES`] of the message.
pub fn encode_zstd_frame_unsized<T: Serialize>(msg: &T) -> Result<Vec<u8>, LinkError> {
    let ioerr = |e: std::io::Error| LinkError::Encode(format!("zstd: {e}"));
    let mut frame = Vec::with_capacity(LEN_BYTES + 1 + ZSTD_SIZE_FRAME_BYTES + (64 << 10));
    frame.extend_from_slice(&[0; LEN_BYTES]);
    frame.push(Codec::Zstd.id());
    let size_at = frame.len() + 8;
    frame.extend_from_slice(&ZSTD_SIZE_MAGIC.to_le_bytes());
    frame.extend_from_slice(&8u32.to_le_bytes());
    frame.extend_from_slice(&[0; 8]);
    let chunks = ZstdChunks {
        out: frame,
        chunk: Vec::with_capacity(ZSTD_CHUNK_BYTES),
        compressed: Vec::new(),
        zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(ioerr)?,
    };
    let (chunks, written) = serialize_to(msg, chunks)?;
    let mut frame = chunks.finish().map_err(ioerr)?;
    frame[size_at..size_at + 8].copy_from_slice(&written.to_le_bytes());
    let rest = frame.len() - LEN_BYTES;
    let len = u32::try_from(rest).map_err(|_| too_large(rest, u32::MAX as usize))?;
    frame[..LEN_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// A writer that compresses what it is given into one zstd frame per [`ZSTD_CHUNK_BYTES`],
/// each recording its size, appended to `out`.
struct ZstdChunks {
    out: Vec<u8>,
    /// Bytes written since the last frame.
    chunk: Vec<u8>,
    /// Scratch for one compressed frame (zstd writes from the start of its buffer).
    compressed: Vec<u8>,
    zstd: zstd::bulk::Compressor<'static>,
}

impl ZstdChunks {
    /// Compresses the bytes gathered so far into a frame of their own.
    fn compress_chunk(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(self.chunk.len()));
        self.zstd
            .compress_to_buffer(&self.chunk, &mut self.compressed)?;
        self.out.extend_from_slice(&self.compressed);
        self.chunk.clear();
        Ok(())
    }

    /// The payload so far with the last, shorter frame.
    fn finish(mut self) -> std::io::Result<Vec<u8>> {
        self.compress_chunk()?;
        Ok(self.out)
    }
}

impl std::io::Write for ZstdChunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(ZSTD_CHUNK_BYTES - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == ZSTD_CHUNK_BYTES {
            self.compress_chunk()?;
        }
        Ok(n)
    }

    /// Frames are cut by size only: a flush does not end one.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serializes `msg` (of `size` bytes) through a zstd encoder appending to `frame`: one zstd
/// frame that records its size, as [`Codec::compress`] makes it.
fn serialize_into_zstd<T: Serialize>(
    msg: &T,
    size: usize,
    frame: Vec<u8>,
) -> Result<Vec<u8>, LinkError> {
    let ioerr = |e: std::io::Error| LinkError::Encode(format!("zstd: {e}"));
    let mut enc = zstd::stream::write::Encoder::new(frame, ZSTD_LEVEL).map_err(ioerr)?;
    enc.include_contentsize(true).map_err(ioerr)?;
    // More or fewer bytes than pledged is an error, never a frame with a wrong size.
    enc.set_pledged_src_size(Some(size as u64)).map_err(ioerr)?;
    // Buffered: postcard's small writes become copies, not calls into zstd.
    let (w, _) = serialize_to(msg, std::io::BufWriter::with_capacity(1 << 16, enc))?;
    let enc = w.into_inner().map_err(|e| ioerr(e.into_error()))?;
    enc.finish().map_err(ioerr)
}

/// Serializes `msg` into `writer`: the writer back, and the bytes written (the message's
/// serialized size). A write error is the writer's, not postcard's stand-in.
fn serialize_to<T: Serialize, W: std::io::Write>(
    msg: &T,
    writer: W,
) -> Result<(W, u64), LinkError> {
    let mut w = KeepError {
        inner: writer,
        error: None,
        written: 0,
    };
    if let Err(e) = postcard::to_io(msg, &mut w) {
        // postcard reports any write error as a full buffer: say what zstd said.
        return Err(w.error.map_or_else(
            || LinkError::Encode(e.to_string()),
            |e| LinkError::Encode(format!("zstd: {e}")),
        ));
    }
    Ok((w.inner, w.written))
}

/// A writer that keeps its last error, which postcard would replace with its own, and
/// counts the bytes written through it (the message's serialized size).
struct KeepError<W> {
    inner: W,
    error: Option<std::io::Error>,
    written: u64,
}

impl<W: std::io::Write> std::io::Write for KeepError<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf).map_err(|e| self.keep(e))?;
        self.written += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf).map_err(|e| self.keep(e))?;
        self.written += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().map_err(|e| self.keep(e))
    }
}

impl<W> KeepError<W> {
    fn keep(&mut self, e: std::io::Error) -> std::io::Error {
        let copy = std::io::Error::new(e.kind(), e.to_string());
        self.error = Some(e);
        copy
    }
}

/// Decodes a frame's body (what follows the length prefix, as [`read_frame`] returns it).
/// A payload that decompresses to more than `max_bytes` is refused.
/// Parts' rows are slices of the decompressed payload, not copies
/// ([`IpcRows::Received`](super::wire::IpcRows::Received)).
pub fn decode_frame<T: DeserializeOwned>(body: &[u8], max_bytes: usize) -> Result<T, LinkError> {
    let (codec, payload) = split_codec(body)?;
    let raw = Buffer::from_vec(codec.decompress(payload, max_bytes)?);
    super::wire::receiving(&raw, || deserialize(raw.as_slice()))
}

/// Decodes a frame whose messages are small (at the link listener: a parent's hello, probe
/// and requests, before anything is known about the peer). Decompression stops at
/// `max_bytes` and at `max_ratio` times the compressed payload (at least a few KiB), so a
/// small bomb is refused before it inflates. Returns the message and its decompressed size
/// (for the session's budget).
pub fn decode_small_frame<T: DeserializeOwned>(
    body: &[u8],
    max_bytes: usize,
    max_ratio: u64,
) -> Result<(T, usize), LinkError> {
    let (codec, payload) = split_codec(body)?;
    let compressed = payload.len() as u64;
    let by_ratio = compressed
        .saturating_mul(max_ratio.max(1))
        .max(INFLATION_FLOOR);
    let limit = usize::try_from(by_ratio).map_or(max_bytes, |r| r.min(max_bytes));
    let raw = match codec.decompress(payload, limit) {
        Err(LinkError::FrameTooLarge { size, .. }) if limit < max_bytes => {
            return Err(LinkError::Inflation {
                compressed,
                size,
                ratio: max_ratio,
            })
        }
        other => other?,
    };
    Ok((deserialize(&raw)?, raw.len()))
}

fn split_codec(body: &[u8]) -> Result<(Codec, &[u8]), LinkError> {
    let (&id, payload) = body
        .split_first()
        .ok_or_else(|| LinkError::Decode("empty frame".into()))?;
    let codec =
        Codec::from_id(id).ok_or_else(|| LinkError::Decode(format!("unknown codec id {id}")))?;
    Ok((codec, payload))
}

fn deserialize<T: DeserializeOwned>(raw: &[u8]) -> Result<T, LinkError> {
    let (msg, rest) = postcard::take_from_bytes::<T>(raw)
        .map_err(|e| LinkError::Decode(format!("cannot deserialize message: {e}")))?;
    if !rest.is_empty() {
        return Err(LinkError::Decode(format!(
            "{} bytes left over after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Reads one frame's body. `Ok(None)` on a clean end of stream before a frame starts; a
/// stream that ends inside a frame is an error. A length above `max_bytes` is refused
/// before its bytes are read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> Result<Option<Vec<u8>>, LinkError> {
    let mut len = [0u8; LEN_BYTES];
    let mut got = 0;
    while got < LEN_BYTES {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(LinkError::Decode(format!(
                "stream ended after {got} bytes of a frame's length"
            )));
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(LinkError::Decode(
            "frame of length 0 (no codec byte)".into(),
        ));
    }
    if len > max_bytes {
        return Err(too_large(len, max_bytes));
    }
    // Grows as bytes arrive rather than trusting the length: a peer that announces a large
    // frame and stalls holds no more memory than it has sent.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    let read = r.take(len as u64).read_to_end(&mut body).await?;
    if read < len {
        return Err(LinkError::Decode(format!(
            "stream ended after {read} of a frame's {len} bytes"
        )));
    }
    Ok(Some(body))
}

/// Writes a whole frame (as [`encode_frame`] makes it) and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), LinkError> {
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests;
