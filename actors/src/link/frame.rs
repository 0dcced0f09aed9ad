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
//! Postcard: a compact serde binary format (varints, no field names) that builds in seconds
//! and has no dependencies beyond serde. The Arrow IPC fields of [`super::wire`] serialize as
//! byte strings, so they cost a memcpy, not one call per byte.
//!
//! Everything read here comes from a peer and is untrusted: sizes are checked before
//! anything is allocated, decompression stops at the caller's limit, and garbage yields a
//! [`LinkError`], never a panic.

use std::io::Read;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::LinkError;

/// The largest frame, and the largest decompressed payload, a node accepts by default. The
/// first frame from a TLA to a SQL node is a full copy of every requested table of the
/// fleet: for 70,000 simulated machines' six tables, 448 MB uncompressed (BENCHMARKS.md,
/// `tla-merge`), 1.58 GB for 250,000 (`fleet-big`, which raises the SQL node's limit).
/// 1 GiB leaves room up to about 160,000 machines without letting a broken peer make a
/// node allocate without bound.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 30;

/// Serialized size from which a zstd frame is compressed as it is serialized. Below it the
/// message is serialized whole, then compressed: postcard makes a write call per field,
/// and through a writer those calls cost a steady diff frame of 70,000 machines (7 MB)
/// 7% more time to encode (`tla-merge`), while a full copy of them (448 MB) took a third
/// of the time streamed.
const STREAM_FROM_BYTES: usize = 32 << 20;

/// Bytes of the length prefix.
const LEN_BYTES: usize = 4;

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
    /// zstd level 1, a standard zstd frame that records its decompressed size.
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
                let declared = zstd::zstd_safe::get_frame_content_size(payload)
                    .map_err(|_| LinkError::Decode("zstd: bad frame header".into()))?;
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
                        zstd_bulk(payload, size as usize)
                    }
                    _ => zstd_stream(payload, max_bytes),
                }
            }
        }
    }
}

/// One-shot zstd decompression of a frame that declares `size` bytes; more is an error.
fn zstd_bulk(payload: &[u8], size: usize) -> Result<Vec<u8>, LinkError> {
    let zerr = |e: std::io::Error| LinkError::Decode(format!("zstd: {e}"));
    let mut d = zstd::bulk::Decompressor::new().map_err(zerr)?;
    d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(zstd_window_log(
        size,
    )))
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
/// straight into the frame or the compressor: a whole fleet's full copy is 1.58 GB
/// serialized at 250,000 machines (448 MB at 70,000), and holding it once more before
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

/// Serializes `msg` (`size` bytes) through a zstd encoder appending to `frame`, the size
/// recorded in the zstd frame as [`Codec::compress`] records it.
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
    let mut w = KeepError {
        inner: std::io::BufWriter::with_capacity(1 << 16, enc),
        error: None,
    };
    if let Err(e) = postcard::to_io(msg, &mut w) {
        // postcard reports any write error as a full buffer: say what zstd said.
        return Err(w
            .error
            .map_or_else(|| LinkError::Encode(e.to_string()), ioerr));
    }
    let enc = w.inner.into_inner().map_err(|e| ioerr(e.into_error()))?;
    enc.finish().map_err(ioerr)
}

/// A writer that keeps its last error, which postcard would replace with its own.
struct KeepError<W> {
    inner: W,
    error: Option<std::io::Error>,
}

impl<W: std::io::Write> std::io::Write for KeepError<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.keep(e))
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf).map_err(|e| self.keep(e))
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
pub fn decode_frame<T: DeserializeOwned>(body: &[u8], max_bytes: usize) -> Result<T, LinkError> {
    let (codec, payload) = split_codec(body)?;
    deserialize(&codec.decompress(payload, max_bytes)?)
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
mod tests {
    use super::*;
    use crate::link::wire::{
        GenerationFrame, Listing, PartFrame, PartRows, PatchValues, Sources, Stamps, TableFrame,
        ToChild, ToParent,
    };
    use rand::rngs::SmallRng;
    use rand::{Rng, RngCore, SeedableRng};

    const CODECS: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd];

    fn sample() -> ToParent {
        ToParent::Generation(GenerationFrame {
            id: 7,
            round: 12,
            sealed_at_ms: 1_700_000_000_123,
            full: true,
            tables: vec![TableFrame {
                name: "sys".into(),
                schema: Some(vec![1, 2, 3, 4]),
                listing: Listing::Changes {
                    gone: vec!["10.0.0.9".into()],
                },
                parts: vec![
                    PartFrame {
                        key: "10.0.0.1".into(),
                        sources: Sources::Stamped(vec![("10.0.0.1".into(), 1_700_000_000_000)]),
                        rows: PartRows::Full(vec![9; 300]),
                    },
                    PartFrame {
                        key: "10.0.0.2".into(),
                        sources: Sources::Named(vec![]),
                        rows: PartRows::Diff {
                            removed: vec![0, 5, 70_000],
                            added: vec![1, 2, 3],
                        },
                    },
                    PartFrame {
                        key: "10.0.0.3".into(),
                        sources: Sources::Held,
                        rows: PartRows::Unchanged,
                    },
                ],
                patches: vec![PatchValues {
                    columns: vec![(2, 2)],
                    rows: 20,
                    values: vec![7; 40],
                }],
            }],
            errors: vec![("p".into(), "bad row".into())],
            stamps: Stamps {
                new: vec![("10.0.0.2".into(), 1_500)],
                ..Stamps::default()
            },
            machines: 3,
            clusters: 0,
        })
    }

    fn body(frame: &[u8]) -> &[u8] {
        &frame[LEN_BYTES..]
    }

    #[test]
    fn roundtrip_every_codec() {
        let msg = sample();
        for codec in CODECS {
            let frame = encode_frame(&msg, codec).expect("encode");
            let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
            assert_eq!(len, frame.len() - LEN_BYTES);
            assert_eq!(frame[4], codec.id());
            let back: ToParent =
                decode_frame(body(&frame), DEFAULT_MAX_FRAME_BYTES).expect("decode");
            assert_eq!(back, msg, "{codec:?}");
        }
    }

    #[test]
    fn byte_fields_are_byte_strings() {
        // 300 bytes of 9s as a byte string: length varint + the bytes, not a sequence of
        // one serialized element each (the same size in postcard, but checks the attribute
        // keeps the layout a plain slice).
        let raw = postcard::to_stdvec(&PartRows::Full(vec![9; 300])).expect("ser");
        assert_eq!(raw.len(), 1 + 2 + 300);
        assert!(raw.ends_with(&[9; 300]));
    }

    #[test]
    fn decompressed_size_above_limit_is_refused() {
        let msg = PartRows::Full(vec![0; 100_000]);
        for codec in CODECS {
            let frame = encode_frame(&msg, codec).expect("encode");
            match decode_frame::<PartRows>(body(&frame), 10_000) {
                Err(LinkError::FrameTooLarge { limit, .. }) => assert_eq!(limit, 10_000),
                other => panic!("{codec:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_large_zstd_frame_is_compressed_as_it_is_serialized_and_records_its_size() {
        // Past STREAM_FROM_BYTES: many parts (postcard's varints and keys between byte
        // strings) that compress about as link data does.
        let mut rng = SmallRng::seed_from_u64(3);
        let mut parts = Vec::new();
        let mut size = 0;
        while size <= STREAM_FROM_BYTES + (1 << 20) {
            let rows: Vec<u8> = (0..4000).map(|_| rng.random_range(0..4)).collect();
            size += rows.len() + 20;
            parts.push(PartFrame {
                key: format!("10.0.{}.{}", parts.len() / 250, parts.len() % 250).into(),
                sources: Sources::Held,
                rows: PartRows::Full(rows),
            });
        }
        let msg = TableFrame {
            name: "processes".into(),
            schema: None,
            listing: Listing::Changes { gone: vec![] },
            parts,
            patches: vec![],
        };
        let whole = postcard::to_stdvec(&msg).expect("ser");
        let serialized = whole.len();
        assert!(serialized >= STREAM_FROM_BYTES, "{serialized}");
        // The streamed payload is the serialized message, compressed.
        let streamed = serialize_into_zstd(&msg, serialized, Vec::new()).expect("stream");
        let raw = zstd::stream::decode_all(&streamed[..]).expect("zstd");
        assert_eq!(raw, whole);
        // A size that is not the message's is an error, never a frame claiming it.
        for wrong in [serialized - 1, serialized + 1] {
            match serialize_into_zstd(&msg, wrong, Vec::new()) {
                Err(LinkError::Encode(e)) => assert!(e.contains("zstd"), "{e}"),
                other => panic!("{wrong}: {other:?}"),
            }
        }
        let frame = encode_frame(&msg, Codec::Zstd).expect("encode");
        let (_, payload) = split_codec(body(&frame)).expect("codec");
        assert_eq!(
            payload, streamed,
            "past STREAM_FROM_BYTES, frames are streamed"
        );
        let declared = zstd::zstd_safe::get_frame_content_size(payload).expect("header");
        assert_eq!(
            declared,
            Some(serialized as u64),
            "the receiver checks this first"
        );
        assert!(
            payload.len() < serialized / 2,
            "compressed: {}",
            payload.len()
        );
        let back: TableFrame = decode_frame(body(&frame), serialized).expect("decode");
        assert_eq!(back, msg);
        match decode_frame::<TableFrame>(body(&frame), serialized - 1) {
            Err(LinkError::FrameTooLarge { size, .. }) => assert_eq!(size, serialized as u64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn highly_compressible_roundtrip() {
        // Zeros compress past zstd's trusted ratio (the streaming path) and near LZ4's limit.
        let msg = PartRows::Full(vec![0; 1 << 20]);
        for codec in CODECS {
            let frame = encode_frame(&msg, codec).expect("encode");
            let back: PartRows = decode_frame(body(&frame), 2 << 20).expect("decode");
            assert_eq!(back, msg, "{codec:?}");
        }
    }

    #[test]
    fn codec_names_in_config() {
        #[derive(Deserialize)]
        struct C {
            c: Codec,
        }
        for (name, codec) in [
            ("none", Codec::None),
            ("lz4", Codec::Lz4),
            ("zstd", Codec::Zstd),
        ] {
            let parsed: C = toml::from_str(&format!("c = \"{name}\"")).expect("parse");
            assert_eq!(parsed.c, codec);
        }
        assert!(toml::from_str::<C>("c = \"gzip\"").is_err());
    }

    #[test]
    fn lz4_lying_size_is_refused_without_allocating() {
        let mut body = vec![Codec::Lz4.id()];
        body.extend_from_slice(&(200u32 << 20).to_le_bytes());
        body.extend_from_slice(&[0x1f, 0, 0, 0]);
        assert!(matches!(
            decode_frame::<PartRows>(&body, DEFAULT_MAX_FRAME_BYTES),
            Err(LinkError::Decode(_))
        ));
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let mut rng = SmallRng::seed_from_u64(7);
        let frames: Vec<Vec<u8>> = CODECS
            .iter()
            .map(|&c| encode_frame(&sample(), c).expect("encode"))
            .collect();
        for _ in 0..3000 {
            let len = rng.random_range(0..600);
            let mut junk = vec![0u8; len];
            rng.fill_bytes(&mut junk);
            if let Some(b) = junk.first_mut() {
                *b %= 4; // mostly valid codec ids, so the decompressors see the junk
            }
            let _ = decode_frame::<ToParent>(&junk, 1 << 20);
        }
        for frame in &frames {
            let body = body(frame);
            for cut in 0..body.len() {
                assert!(decode_frame::<ToParent>(&body[..cut], 1 << 20).is_err());
            }
            // Flipped bytes: decoding may succeed with other values, but must not panic.
            for _ in 0..500 {
                let mut bad = body.to_vec();
                let i = rng.random_range(1..bad.len());
                bad[i] ^= 1 << rng.random_range(0..8);
                let _ = decode_frame::<ToParent>(&bad, 1 << 20);
            }
        }
    }

    #[test]
    fn unknown_codec_and_trailing_bytes_are_errors() {
        assert!(matches!(
            decode_frame::<ToParent>(&[9, 1, 2], 1024),
            Err(LinkError::Decode(m)) if m.contains("codec")
        ));
        let mut frame = encode_frame(&sample(), Codec::None).expect("encode");
        frame.push(0);
        assert!(matches!(
            decode_frame::<ToParent>(body(&frame), 1 << 20),
            Err(LinkError::Decode(m)) if m.contains("left over")
        ));
    }

    /// A zstd bomb: 64 MiB of zeros in a few KiB.
    fn zstd_bomb(pledged: bool) -> (Vec<u8>, usize) {
        let inflated = 64 << 20;
        let zeros = vec![0u8; inflated];
        let payload = if pledged {
            zstd::bulk::compress(&zeros, ZSTD_LEVEL).expect("compress")
        } else {
            // The streaming encoder does not record the size: the decoder cannot know it.
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).expect("enc");
            std::io::Write::write_all(&mut enc, &zeros).expect("write");
            enc.finish().expect("finish")
        };
        let mut body = vec![Codec::Zstd.id()];
        body.extend_from_slice(&payload);
        (body, inflated)
    }

    #[test]
    fn zstd_bomb_is_refused_before_it_inflates() {
        for pledged in [true, false] {
            let (body, inflated) = zstd_bomb(pledged);
            assert!(body.len() < 16 << 10, "{} bytes", body.len());
            // At the link listener: the ratio cap binds long before the frame limit.
            match decode_small_frame::<ToChild>(&body, DEFAULT_MAX_FRAME_BYTES, 32) {
                Err(LinkError::Inflation {
                    compressed, size, ..
                }) => {
                    assert_eq!(compressed as usize, body.len() - 1);
                    if pledged {
                        // Refused from the frame header: nothing was inflated.
                        assert_eq!(size as usize, inflated);
                    } else {
                        // Streamed, and stopped one byte past the cap.
                        let cap = (compressed * 32).max(INFLATION_FLOOR);
                        assert_eq!(size, cap + 1, "stopped at the cap");
                    }
                }
                // Without a declared size, the encoder's window (512 KiB at level 1) is
                // larger than the cap allows: refused before any output.
                Err(LinkError::Decode(m)) if !pledged => assert!(m.contains("zstd"), "{m}"),
                other => panic!("pledged {pledged}: {other:?}"),
            }
            // Streamed under a cap the window fits: stopped one byte past it.
            if !pledged {
                let cap = 4 << 20;
                assert!(matches!(
                    decode_frame::<ToChild>(&body, cap),
                    Err(LinkError::FrameTooLarge { size, limit }) if size == cap as u64 + 1 && limit == cap as u64
                ));
            }
            // And the small frame limit, when it binds first (or the window it allows).
            match decode_small_frame::<ToChild>(&body, 4096, 1 << 20) {
                Err(LinkError::FrameTooLarge { limit: 4096, .. }) => {}
                Err(LinkError::Decode(m)) if !pledged => assert!(m.contains("zstd"), "{m}"),
                other => panic!("pledged {pledged}: {other:?}"),
            }
            // From a child, bounded by max_frame_bytes (here 1 MiB).
            match decode_frame::<ToParent>(&body, 1 << 20) {
                Err(LinkError::FrameTooLarge { size, limit }) => {
                    assert_eq!(limit, 1 << 20);
                    assert!(size <= (1 << 20) + 1 || size as usize == inflated, "{size}");
                }
                other => panic!("pledged {pledged}: {other:?}"),
            }
        }
    }

    #[test]
    fn lz4_bomb_is_refused_by_the_ratio() {
        let zeros = vec![0u8; 1 << 20];
        let mut body = vec![Codec::Lz4.id()];
        body.extend_from_slice(&lz4_flex::block::compress_prepend_size(&zeros));
        assert!(matches!(
            decode_small_frame::<ToChild>(&body, DEFAULT_MAX_FRAME_BYTES, 32),
            Err(LinkError::Inflation { size, .. }) if size == 1 << 20
        ));
    }

    #[test]
    fn small_frames_decode_within_the_limits() {
        let msg = ToChild::Request {
            tables: (0..500).map(|i| format!("table_{i}")).collect(),
        };
        for codec in CODECS {
            let frame = encode_frame(&msg, codec).expect("encode");
            let (back, raw) =
                decode_small_frame::<ToChild>(body(&frame), 64 << 10, 32).expect("decode");
            assert_eq!(back, msg, "{codec:?}");
            assert!(raw > 4000, "{raw}");
        }
        assert_eq!(zstd_window_log(64 << 10), 16);
        assert_eq!(zstd_window_log(1), ZSTD_WINDOW_LOG_MIN);
        assert_eq!(
            zstd_window_log(DEFAULT_MAX_FRAME_BYTES),
            ZSTD_WINDOW_LOG_MAX
        );
    }

    /// A peer announces 900 MiB, sends a few KiB and stalls: refused from the length,
    /// without waiting for the rest and without reserving it.
    #[tokio::test]
    async fn announced_huge_frame_is_refused_without_waiting() {
        let (mut peer, mut ours) = tokio::io::duplex(64 << 10);
        let mut start = (900u32 << 20).to_be_bytes().to_vec();
        start.push(Codec::None.id());
        start.extend_from_slice(&[7; 4096]);
        peer.write_all(&start).await.expect("write");
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            read_frame(&mut ours, 64 << 10),
        )
        .await
        .expect("answered at once, the peer still connected");
        assert!(matches!(
            read,
            Err(LinkError::FrameTooLarge { size, limit: 65536 }) if size == 900 << 20
        ));
        drop(peer);
    }

    #[tokio::test]
    async fn read_write_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let frames: Vec<Vec<u8>> = CODECS
            .iter()
            .map(|&c| encode_frame(&sample(), c).expect("encode"))
            .collect();
        let sent = frames.clone();
        let writer = tokio::spawn(async move {
            for f in &sent {
                write_frame(&mut a, f).await.expect("write");
            }
        });
        for f in &frames {
            let body = read_frame(&mut b, 1 << 20)
                .await
                .expect("read")
                .expect("frame");
            assert_eq!(body, f[LEN_BYTES..]);
            let msg: ToParent = decode_frame(&body, 1 << 20).expect("decode");
            assert_eq!(msg, sample());
        }
        writer.await.expect("writer");
        assert!(read_frame(&mut b, 1 << 20)
            .await
            .expect("clean EOF")
            .is_none());
    }

    #[tokio::test]
    async fn read_frame_errors() {
        // Too large: refused from the length alone.
        let mut r: &[u8] = &[0, 0, 1, 0, 0];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(LinkError::FrameTooLarge {
                size: 256,
                limit: 100
            })
        ));
        // Ends inside the length, inside the body; a zero length.
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(LinkError::Decode(_))
        ));
        let mut r: &[u8] = &[0, 0, 0, 10, 0, 1, 2];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(LinkError::Decode(_))
        ));
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(LinkError::Decode(_))
        ));
    }
}
