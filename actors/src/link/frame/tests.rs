//! Frames: codecs, limits against hostile peers, and streamed compression.

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
                    rows: PartRows::Full(vec![9; 300].into()),
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
                PartFrame {
                    key: "10.0.0.4".into(),
                    sources: Sources::Named(vec!["10.0.0.4".into()]),
                    rows: PartRows::InBlock(2),
                },
            ],
            patches: vec![PatchValues {
                columns: vec![(2, 2)],
                rows: 20,
                values: vec![7; 40],
            }],
            blocks: vec![vec![5; 200].into()],
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

/// [`sample`]'s generation with these rows as its first table's parts (`m0`, `m1`, ...).
fn sample_with_parts(rows: impl Iterator<Item = PartRows>) -> GenerationFrame {
    let ToParent::Generation(mut g) = sample() else {
        unreachable!()
    };
    g.tables[0].parts = rows
        .enumerate()
        .map(|(i, rows)| PartFrame {
            key: format!("m{i}").into(),
            sources: Sources::Held,
            rows,
        })
        .collect();
    g
}

#[test]
fn roundtrip_every_codec() {
    let msg = sample();
    for codec in CODECS {
        let frame = encode_frame(&msg, codec).expect("encode");
        let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, frame.len() - LEN_BYTES);
        assert_eq!(frame[4], codec.id());
        let back: ToParent = decode_frame(body(&frame), DEFAULT_MAX_FRAME_BYTES).expect("decode");
        assert_eq!(back, msg, "{codec:?}");
    }
}

#[test]
fn byte_fields_are_byte_strings() {
    // 300 bytes of 9s as a byte string: length varint + the bytes, not a sequence of
    // one serialized element each (the same size in postcard, but checks the attribute
    // keeps the layout a plain slice).
    let raw = postcard::to_stdvec(&PartRows::Full(vec![9; 300].into())).expect("ser");
    assert_eq!(raw.len(), 1 + 2 + 300);
    assert!(raw.ends_with(&[9; 300]));
}

#[test]
fn decompressed_size_above_limit_is_refused() {
    let msg = PartRows::Full(vec![0; 100_000].into());
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
            rows: PartRows::Full(rows.into()),
        });
    }
    let msg = TableFrame {
        name: "processes".into(),
        schema: None,
        listing: Listing::Changes { gone: vec![] },
        parts,
        patches: vec![],
        blocks: vec![],
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
    let msg = PartRows::Full(vec![0; 1 << 20].into());
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
fn a_zstd_bomb_that_gives_its_size_is_refused_from_it() {
    let zeros = vec![0u8; 64 << 20];
    let frame = encode_zstd_frame_unsized(&serde_bytes::Bytes::new(&zeros)).expect("encode");
    let body = body(&frame);
    assert!(body.len() < 16 << 10, "{} bytes", body.len());
    match decode_small_frame::<ToChild>(body, DEFAULT_MAX_FRAME_BYTES, 32) {
        Err(LinkError::Inflation { size, .. }) => assert!(size > 64 << 20, "{size}"),
        other => panic!("{other:?}"),
    }
    // From a child, bounded by max_frame_bytes: refused from the size given.
    let given = zstd_size_frame(&body[1..]).map(|(size, _)| size);
    assert_eq!(given, Some(zeros.len() as u64 + 4), "varint length + bytes");
    assert!(matches!(
        decode_frame::<ToChild>(body, 4 << 20),
        Err(LinkError::FrameTooLarge { size, limit }) if Some(size) == given && limit == 4 << 20
    ));
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

/// A table frame of `parts` parts of `bytes` random bytes of four values each (compressing
/// about as link data does).
fn random_parts(rng: &mut SmallRng, parts: usize, bytes: usize) -> TableFrame {
    TableFrame {
        name: "processes".into(),
        schema: None,
        listing: Listing::Every,
        parts: (0..parts)
            .map(|i| PartFrame {
                key: format!("10.{}.{}.{}", i / 62_500, i / 250 % 250, i % 250).into(),
                sources: Sources::Held,
                rows: PartRows::Full(
                    (0..bytes)
                        .map(|_| rng.random_range(0..4u8))
                        .collect::<Vec<u8>>()
                        .into(),
                ),
            })
            .collect(),
        patches: vec![],
        blocks: vec![],
    }
}

#[test]
fn a_frame_compressed_before_its_size_is_known_gives_it_first() {
    let mut rng = SmallRng::seed_from_u64(5);
    for parts in [1, 3_000] {
        let msg = random_parts(&mut rng, parts, 300);
        let serialized = postcard::to_stdvec(&msg).expect("ser");
        let frame = encode_zstd_frame_unsized(&msg).expect("encode");
        let (codec, payload) = split_codec(body(&frame)).expect("codec");
        assert_eq!(codec, Codec::Zstd);
        assert_eq!(
            u32::from_be_bytes(frame[..LEN_BYTES].try_into().expect("len")) as usize,
            frame.len() - LEN_BYTES
        );
        // The size first, in a frame every zstd decoder skips.
        assert_eq!(
            zstd_size_frame(payload).map(|(size, _)| size),
            Some(serialized.len() as u64)
        );
        assert_eq!(
            zstd::stream::decode_all(payload).expect("any zstd decoder"),
            serialized
        );
        let back: TableFrame = decode_frame(body(&frame), serialized.len()).expect("decode");
        assert_eq!(back, msg, "{parts} parts");
        // Refused from the size given, before anything is inflated.
        match decode_frame::<TableFrame>(body(&frame), serialized.len() - 1) {
            Err(LinkError::FrameTooLarge { size, .. }) => {
                assert_eq!(size, serialized.len() as u64)
            }
            other => panic!("{other:?}"),
        }
        // A size that is not the payload's is an error, never a panic.
        for lie in [0, serialized.len() as u64 - 1, serialized.len() as u64 + 1] {
            let mut forged = body(&frame).to_vec();
            forged[1 + 8..1 + 16].copy_from_slice(&lie.to_le_bytes());
            match decode_frame::<TableFrame>(&forged, 1 << 30) {
                Err(LinkError::Decode(_)) => {}
                other => panic!("size {lie}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_payload_compressed_before_its_size_is_known_comes_in_frames_decoded_on_every_core() {
    // Three frames and a bit: more than `threads::PARALLEL_FROM_PARTS` KiB, so the
    // receiver decompresses them on several threads.
    let mut rng = SmallRng::seed_from_u64(7);
    let parts = (3 * ZSTD_CHUNK_BYTES).max(crate::threads::PARALLEL_FROM_PARTS << 10) / 300 + 1;
    let msg = random_parts(&mut rng, parts, 280);
    let serialized = postcard::to_stdvec(&msg).expect("ser");
    let frame = encode_zstd_frame_unsized(&msg).expect("encode");
    let (_, payload) = split_codec(body(&frame)).expect("codec");
    let (size, frames) = zstd_size_frame(payload).expect("size first");
    assert_eq!(size, serialized.len() as u64);
    let sized = sized_frames(frames, size).expect("every frame records its size");
    assert_eq!(sized.len(), serialized.len().div_ceil(ZSTD_CHUNK_BYTES));
    assert!(sized[..sized.len() - 1]
        .iter()
        .all(|(_, n)| *n == ZSTD_CHUNK_BYTES));
    assert_eq!(
        zstd::stream::decode_all(payload).expect("any zstd decoder"),
        serialized,
        "one stream to any zstd decoder"
    );
    let back: TableFrame = decode_frame(body(&frame), serialized.len()).expect("decode");
    assert_eq!(back, msg);

    // Small frames (under a MiB on average) are decompressed in one pass, as any zstd
    // decoder would: the same message.
    let mut small = vec![Codec::Zstd.id()];
    small.extend_from_slice(&ZSTD_SIZE_MAGIC.to_le_bytes());
    small.extend_from_slice(&8u32.to_le_bytes());
    small.extend_from_slice(&size.to_le_bytes());
    for piece in serialized.chunks(64 << 10) {
        small.extend_from_slice(&zstd::bulk::compress(piece, ZSTD_LEVEL).expect("compress"));
    }
    let back: TableFrame = decode_frame(&small, serialized.len()).expect("small frames");
    assert_eq!(back, msg);

    // Frames missing or out of place are an error, never a panic or a wrong message.
    let at = |i: usize| {
        let start = sized[..i].iter().map(|(f, _)| f.len()).sum::<usize>();
        start..start + sized[i].0.len()
    };
    let head = 1 + ZSTD_SIZE_FRAME_BYTES;
    let without_last = &body(&frame)[..head + at(sized.len() - 1).start];
    let last_first = {
        let mut b = body(&frame)[..head].to_vec();
        let last = sized.len() - 1;
        b.extend_from_slice(&frames[at(last)]);
        b.extend_from_slice(&frames[..at(last).start]);
        b
    };
    for (what, forged) in [("truncated", without_last), ("reordered", &last_first[..])] {
        match decode_frame::<TableFrame>(forged, 1 << 30) {
            Err(LinkError::Decode(_)) => {}
            Ok(_) => panic!("{what}: decoded"),
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

#[test]
fn a_generation_with_many_new_rows_is_not_sized_first() {
    use crate::link::wire::IpcRows;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;
    let batch = |i: usize, rows: usize| {
        RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from_iter_values(
                (0..rows as i64).map(|r| r + i as i64),
            )) as _,
        )])
        .expect("batch")
    };
    // `parts` parts of `rows` rows each, in blocks of 100 parts, still batches.
    let generation = |parts: usize, rows: usize| {
        let mut g = sample_with_parts((0..parts).map(|_| PartRows::InBlock(rows as u32)));
        g.tables[0].blocks = (0..parts)
            .collect::<Vec<_>>()
            .chunks(100)
            .map(|c| IpcRows::Batches(c.iter().map(|&i| batch(i, rows)).collect()))
            .collect();
        g
    };
    let blocks_bytes = |parts: usize, rows: usize| -> Vec<IpcRows> {
        (0..parts)
            .collect::<Vec<_>>()
            .chunks(100)
            .map(|c| {
                let batches: Vec<RecordBatch> = c.iter().map(|&i| batch(i, rows)).collect();
                IpcRows::Bytes(crate::link::diff::ipc_rows(&batches).expect("ipc"))
            })
            .collect()
    };
    // Uncompressed, many new rows are encoded on every core first: the same bytes.
    let (parts, rows) = (10_000, 64);
    assert!(parts * rows / 32 >= crate::threads::PARALLEL_FROM_PARTS);
    let frame = encode_generation(generation(parts, rows), Codec::None).expect("encode");
    let Ok(ToParent::Generation(back)) = decode_frame(body(&frame), 1 << 30) else {
        panic!("no generation back");
    };
    assert_eq!(back.tables[0].blocks, blocks_bytes(parts, rows));
    for (parts, size_later) in [
        (UNSIZED_FROM_LATE_ROWS / 2 - 1, false),
        (UNSIZED_FROM_LATE_ROWS / 2, true),
    ] {
        let g = generation(parts, 2);
        assert_eq!(g.late_rows().len(), parts.div_ceil(100));
        let frame = encode_generation(g.clone(), Codec::Zstd).expect("encode");
        let (_, payload) = split_codec(body(&frame)).expect("codec");
        assert_eq!(
            zstd_size_frame(payload).is_some(),
            size_later,
            "{parts} parts"
        );
        if !size_later {
            let sized = encode_frame(&ToParent::Generation(g.clone()), Codec::Zstd);
            assert_eq!(frame, sized.expect("encode"));
        }
        let Ok(ToParent::Generation(back)) = decode_frame(body(&frame), 1 << 30) else {
            panic!("{parts} parts: no generation back");
        };
        assert!(back.late_rows().is_empty());
        assert_eq!(back.tables[0].blocks, blocks_bytes(parts, 2));
        assert_eq!(back.tables[0].parts, g.tables[0].parts);
        // Other codecs are sized as any frame, the new rows encoded first.
        let none = encode_generation(g.clone(), Codec::None).expect("encode");
        assert_eq!(
            none,
            encode_frame(&ToParent::Generation(g), Codec::None).expect("encode")
        );
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

/// A decoded frame's full rows are slices of its one decompressed payload, not copies,
/// and travel on as the same bytes; deserialized outside `decode_frame` they are copies.
#[test]
fn received_rows_share_the_frame() {
    use crate::link::wire::IpcRows;
    let g =
        sample_with_parts((0..50u8).map(|i| PartRows::Full(vec![i; 100 + usize::from(i)].into())));
    let sent = ToParent::Generation(g.clone());
    for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
        let frame = encode_frame(&sent, codec).expect("encode");
        let Ok(ToParent::Generation(back)) = decode_frame::<ToParent>(body(&frame), 1 << 20) else {
            panic!("{codec:?}: no generation back");
        };
        assert_eq!(back, g, "{codec:?}: the same frame");
        let shared: Vec<&Buffer> = back.tables[0]
            .parts
            .iter()
            .map(|p| match &p.rows {
                PartRows::Full(IpcRows::Received(b)) => b,
                other => panic!("{codec:?}: rows copied: {other:?}"),
            })
            .collect();
        // One payload: every slice is of the same allocation.
        assert!(
            shared.iter().all(|b| b.data_ptr() == shared[0].data_ptr()),
            "{codec:?}: one allocation"
        );
        // Sent on (a TLA deferring a cluster's tables) as the bytes received.
        let again = encode_frame(&ToParent::Generation(back), codec).expect("encode");
        assert_eq!(
            decode_frame::<ToParent>(body(&again), 1 << 20).ok(),
            Some(sent.clone())
        );
    }
    let plain: ToParent =
        postcard::from_bytes(&postcard::to_stdvec(&sent).expect("ser")).expect("de");
    let ToParent::Generation(plain) = plain else {
        unreachable!()
    };
    assert!(matches!(
        plain.tables[0].parts[0].rows,
        PartRows::Full(IpcRows::Bytes(_))
    ));
}
