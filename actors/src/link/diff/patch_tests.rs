//! The `Patch` part kind end to end: encoder, wire, decoder.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::ipc::IpcWriter;
use super::patch::{narrow, patch_schema, widen};
use super::tests::{
    assert_same, batch_of, generation, kinds, listed_keys, part, schema, send, Row,
};
use super::{LinkDecoder, LinkEncoder, TableKeys};
use crate::generation::{GenTable, Part};
use crate::link::frame::{encode_frame, Codec};
use crate::link::wire::{
    GenerationFrame, Listing, PartFrame, PartRows, PatchValues, Sources, Stamps, TableFrame,
};
use crate::link::LinkError;

fn keyed(key: &[&str]) -> LinkEncoder {
    let keys: TableKeys = Arc::new(HashMap::from([(
        "sys".to_string(),
        key.iter().map(|k| k.to_string()).collect(),
    )]));
    LinkEncoder::with_keys(keys)
}

fn sys_only() -> BTreeSet<String> {
    ["sys".to_string()].into()
}

fn names(n: usize) -> Vec<&'static str> {
    // Leaked once per test: rows hold &'static str.
    (0..n)
        .map(|i| &*Box::leak(format!("p{i}").into_boxed_str()))
        .collect()
}

/// The part's rows as sent, and the columns of its patch values as they travel.
type Sent = (PartRows, Vec<(u32, u8)>);

/// Sends `rows` as generation `id` and returns the frame's only part and the parent's rows.
fn step(
    enc: &mut LinkEncoder,
    dec: &mut LinkDecoder,
    id: u64,
    rows: &[Row],
) -> (Sent, RecordBatch, usize) {
    let s = schema();
    let g = generation(id, vec![("sys", vec![part(&s, "m", rows)])]);
    let f = enc.encode(&g, &sys_only(), 1, 0).expect("encode");
    let size = encode_frame(&f, Codec::Zstd).expect("zstd").len();
    let (f, _) = send(&f);
    let columns = match f.tables[0].parts.first().map(|p| &p.rows) {
        Some(PartRows::Patch {
            values: Some(at), ..
        }) => f.tables[0].patches[*at as usize].columns.clone(),
        _ => vec![],
    };
    // A part left out of a table that lists only changes is unchanged.
    let rows_sent = match f.tables[0].parts.first() {
        Some(p) => p.rows.clone(),
        None => {
            assert!(matches!(f.tables[0].listing, Listing::Changes { .. }));
            PartRows::Unchanged
        }
    };
    let c = dec.apply(f).expect("apply");
    assert_same(&c, &g, &sys_only());
    (
        (rows_sent, columns),
        c.tables["sys"].parts[0].batch.clone(),
        size,
    )
}

#[test]
fn counters_travel_as_deltas_of_the_changed_columns_only() {
    let n = 200;
    let ns = names(n);
    let rows: Vec<Row> = (0..n)
        .map(|i| (ns[i], 1_000_000 + i as i64 * 7919, Some(i as f64 * 1.25)))
        .collect();
    let (mut enc, mut dec) = (keyed(&["name"]), LinkDecoder::new());
    let (_, _, full_size) = step(&mut enc, &mut dec, 1, &rows);

    // Every counter advances by about 10; one gauge changes.
    let mut next = rows.clone();
    for (i, r) in next.iter_mut().enumerate() {
        r.1 += 10 + (i % 3) as i64;
    }
    next[5].2 = Some(-3.0);
    let ((sent, columns), held, size) = step(&mut enc, &mut dec, 2, &next);
    match &sent {
        PartRows::Patch {
            rows,
            removed,
            added,
            ..
        } => {
            assert_eq!(rows.len(), n);
            assert!(rows.iter().all(|&g| g == 0), "every row: all gaps zero");
            // The gauge changed in one row only: its deltas are mostly zero, smaller than values.
            // The counter's steps (10 to 12) travel in one byte each, the gauge's in eight.
            assert_eq!(columns, vec![(1, 1), (2, 8)]);
            assert!(removed.is_empty() && added.is_empty());
        }
        other => panic!("expected a patch, got {other:?}"),
    }
    // In place: the parent's rows are exactly the child's, in order.
    assert_eq!(held, batch_of(&schema(), &next));
    // Both patched columns were rebuilt into one buffer (`packed`).
    let start = |c: usize| held.column(c).to_data().buffers()[0].data_ptr();
    assert_eq!(start(1), start(2));
    assert!(
        size * 2 < full_size,
        "patch {size} bytes vs full {full_size}"
    );

    // Only one row changes: one patched row, named by its index.
    let mut third = next.clone();
    third[42].1 += 1;
    let ((sent, columns), held, _) = step(&mut enc, &mut dec, 3, &third);
    match &sent {
        PartRows::Patch { rows, .. } => {
            assert_eq!(rows, &vec![42]);
            assert_eq!(columns.len(), 1);
        }
        other => panic!("expected a patch, got {other:?}"),
    }
    assert_eq!(held, batch_of(&schema(), &third));
}

#[test]
fn rows_come_and_go_in_the_documented_order() {
    let ns = names(30);
    let rows: Vec<Row> = (0..30).map(|i| (ns[i], i as i64, None)).collect();
    let (mut enc, mut dec) = (keyed(&["name"]), LinkDecoder::new());
    step(&mut enc, &mut dec, 1, &rows);

    // p3 leaves, p40 arrives in the middle, p7 changes, and the child reorders a few.
    let new40 = &*Box::leak("p40".to_string().into_boxed_str());
    let mut next: Vec<Row> = rows.clone();
    next.remove(3);
    next.insert(10, (new40, 40, Some(4.0)));
    next[6].1 = 700; // p7
    next.swap(0, 1);
    let ((sent, _), held, _) = step(&mut enc, &mut dec, 2, &next);
    assert!(matches!(sent, PartRows::Patch { .. }), "{sent:?}");
    // Held rows patched in place, without p3, then p40.
    let mut want: Vec<Row> = rows.clone();
    want[7].1 = 700;
    want.remove(3);
    want.push((new40, 40, Some(4.0)));
    assert_eq!(held, batch_of(&schema(), &want));

    // The encoder mirrors the parent's order: the next patch's indexes refer to it.
    let mut third = next.clone();
    third.retain(|r| r.0 != "p0");
    let ((sent, columns), held, _) = step(&mut enc, &mut dec, 3, &third);
    match &sent {
        PartRows::Patch { removed, .. } => {
            assert_eq!(removed, &vec![0]);
            assert!(columns.is_empty());
        }
        other => panic!("expected a patch, got {other:?}"),
    }
    want.remove(0);
    assert_eq!(held, batch_of(&schema(), &want));

    // Same rows in another order: unchanged, the parent keeps its order.
    let mut fourth = third.clone();
    fourth.reverse();
    let ((sent, _), held, _) = step(&mut enc, &mut dec, 4, &fourth);
    assert_eq!(sent, PartRows::Unchanged);
    assert_eq!(held, batch_of(&schema(), &want));
}

/// Random edits with keys that repeat (`name` from 4 values) or are NULL (`x`): the
/// parent always holds the child's rows, every part kind shows up.
#[test]
fn random_churn_with_repeated_and_null_keys_stays_in_step() {
    for key in [&["name"][..], &["x"][..], &["name", "x"][..]] {
        let s = schema();
        let pool = ["a", "b", "c", "d"];
        let mut rng = SmallRng::seed_from_u64(7);
        let row = |rng: &mut SmallRng| -> Row {
            (
                pool[rng.random_range(0..4)],
                rng.random_range(0..1000),
                rng.random_bool(0.5).then(|| rng.random_range(0..3) as f64),
            )
        };
        let mut parts: Vec<Vec<Row>> = (0..6)
            .map(|_| {
                (0..rng.random_range(0..20))
                    .map(|_| row(&mut rng))
                    .collect()
            })
            .collect();
        let mut enc = keyed(key);
        let mut dec = LinkDecoder::new();
        let mut seen = BTreeSet::new();
        for id in 1..200 {
            for rows in parts.iter_mut() {
                if rng.random_bool(0.4) {
                    continue;
                }
                for _ in 0..rng.random_range(0..5) {
                    match rng.random_range(0..5) {
                        0 if !rows.is_empty() => {
                            let i = rng.random_range(0..rows.len());
                            rows.remove(i);
                        }
                        1 | 2 if !rows.is_empty() => {
                            // A counter moves: same key, another value.
                            let i = rng.random_range(0..rows.len());
                            rows[i].1 += rng.random_range(1..20);
                        }
                        3 if rows.len() > 1 => rows.swap(0, 1),
                        _ => rows.push(row(&mut rng)),
                    }
                }
            }
            let present: Vec<Part> = parts
                .iter()
                .enumerate()
                .filter(|(i, _)| (id + i) % 9 != 0)
                .map(|(i, rows)| part(&s, &format!("m{i}"), rows))
                .collect();
            let g = generation(id as u64, vec![("sys", present)]);
            let f = enc.encode(&g, &sys_only(), 6, 0).expect("encode");
            seen.extend(kinds(&f).into_iter().map(|k| k.2));
            let c = dec.apply(send(&f).0).expect("apply");
            assert_same(&c, &g, &sys_only());
        }
        for k in ["new", "full", "unchanged", "patch"] {
            assert!(seen.contains(k), "key {key:?}: no {k} part in {seen:?}");
        }
        assert!(!seen.contains("diff"), "a keyed table never diffs");
    }
}

#[test]
fn a_key_the_schema_lacks_falls_back_to_multiset_diffs() {
    let ns = names(20);
    let rows: Vec<Row> = (0..20).map(|i| (ns[i], i as i64, None)).collect();
    let (mut enc, mut dec) = (keyed(&["nope"]), LinkDecoder::new());
    step(&mut enc, &mut dec, 1, &rows);
    let mut next = rows.clone();
    next[3].1 = 99;
    let ((sent, _), _, _) = step(&mut enc, &mut dec, 2, &next);
    assert!(matches!(sent, PartRows::Diff { .. }), "{sent:?}");
}

#[test]
fn schema_change_sends_full_then_patches_again() {
    let wanted = sys_only();
    let mut enc = keyed(&["name"]);
    let mut dec = LinkDecoder::new();
    let ns = names(10);
    let rows: Vec<Row> = (0..10).map(|i| (ns[i], i as i64, None)).collect();
    step(&mut enc, &mut dec, 1, &rows);

    // The table gains a column (a timestamp: deltas of another type).
    let s2: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Int64, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let batch = |at: i64| {
        RecordBatch::try_new(
            s2.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(ns.iter().copied())) as ArrayRef,
                Arc::new(Int64Array::from_iter_values(0..10)),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..10).map(|i| 1_700_000_000_000 + i * 1000 + at),
                )),
            ],
        )
        .expect("batch")
    };
    let gen = |id: u64, b: RecordBatch| {
        let mut g = generation(id, vec![]);
        g.tables.insert(
            "sys".into(),
            GenTable {
                schema: s2.clone(),
                parts: vec![Arc::new(Part::new("m".into(), b, vec![]))],
            },
        );
        g
    };
    let f2 = enc
        .encode(&gen(2, batch(0)), &wanted, 1, 0)
        .expect("encode");
    assert!(f2.tables[0].schema.is_some());
    assert_eq!(kinds(&f2)[0].2, "new");
    dec.apply(send(&f2).0).expect("apply");
    let f3 = enc
        .encode(&gen(3, batch(10_000)), &wanted, 1, 0)
        .expect("encode");
    match &f3.tables[0].parts[0].rows {
        PartRows::Patch {
            values: Some(at), ..
        } => assert_eq!(f3.tables[0].patches[*at as usize].columns[0].0, 2),
        other => panic!("expected a patch, got {other:?}"),
    }
    let c3 = dec.apply(send(&f3).0).expect("apply");
    assert_eq!(c3.tables["sys"].parts[0].batch, batch(10_000));
}

#[test]
fn deltas_are_exact_for_floats_and_wrap_for_integers() {
    let s = schema();
    let (mut enc, mut dec) = (keyed(&["name"]), LinkDecoder::new());
    let ns = names(8);
    let first: Vec<Row> = vec![
        (ns[0], i64::MAX, Some(0.1)),
        (ns[1], i64::MIN, Some(1e300)),
        (ns[2], 0, Some(-0.0)),
        (ns[3], 5, Some(f64::NAN)),
        (ns[4], 6, Some(1.0)),
        (ns[5], 7, Some(2.0)),
        (ns[6], 8, Some(3.0)),
        (ns[7], 9, Some(4.0)),
    ];
    step(&mut enc, &mut dec, 1, &first);
    let second: Vec<Row> = vec![
        (ns[0], i64::MIN, Some(0.1 + 0.2)),
        (ns[1], i64::MAX, Some(1e300 * 1.0000001)),
        (ns[2], 1, Some(0.0)),
        (ns[3], 6, Some(f64::INFINITY)),
        (ns[4], 7, Some(1.0000000001)),
        (ns[5], 8, Some(2.0000000001)),
        (ns[6], 9, Some(3.0000000001)),
        (ns[7], 10, Some(4.0000000001)),
    ];
    let ((sent, _), held, _) = step(&mut enc, &mut dec, 2, &second);
    assert!(matches!(sent, PartRows::Patch { .. }), "{sent:?}");
    let want = batch_of(&s, &second);
    let bits = |b: &RecordBatch| -> Vec<u64> {
        let x = b
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("f64");
        x.values().iter().map(|v| v.to_bits()).collect()
    };
    assert_eq!(bits(&held), bits(&want));
    assert_eq!(held.column(1), want.column(1));
}

#[test]
fn decoder_refuses_inconsistent_patches() {
    let s = schema();
    let ns = names(4);
    let rows: Vec<Row> = (0..4).map(|i| (ns[i], i as i64, Some(1.0))).collect();
    let mut enc = keyed(&["name"]);
    let g1 = generation(1, vec![("sys", vec![part(&s, "m", &rows)])]);
    let full = enc.encode(&g1, &sys_only(), 1, 0).expect("encode");
    let ready = || {
        let mut d = LinkDecoder::new();
        d.apply(full.clone()).expect("full frame");
        d
    };
    let frame = |key: &str, (rows, patches): (PartRows, Vec<PatchValues>)| GenerationFrame {
        id: 2,
        round: 2,
        sealed_at_ms: 0,
        full: false,
        tables: vec![TableFrame {
            name: "sys".into(),
            listing: Listing::Every,
            schema: None,
            parts: vec![PartFrame {
                key: key.into(),
                sources: Sources::Named(vec![]),
                rows,
            }],
            patches,
            blocks: vec![],
        }],
        errors: vec![],
        stamps: Stamps::default(),
        machines: 1,
        clusters: 0,
    };
    // Values as the encoder sends them (small deltas in one byte: `(column, 1)` below).
    // (bytes, rows).
    let values = |columns: &[(u32, bool)], arrays: Vec<ArrayRef>| -> (Vec<u8>, u32) {
        let schema = patch_schema(&s, columns).expect("schema");
        let batch = RecordBatch::try_new(schema, arrays).expect("batch");
        let wire = narrow(&batch, columns, &mut IpcWriter::new()).expect("narrow");
        (wire.values, wire.rows)
    };
    let i64s = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
    let delta1 = values(&[(1, true)], vec![i64s(vec![1])]);
    let patch = |rows: Vec<u32>, columns: Vec<(u32, u8)>, (values, n): (Vec<u8>, u32)| {
        let rows = PartRows::Patch {
            rows,
            values: Some(0),
            removed: vec![],
            added: vec![],
        };
        (
            rows,
            vec![PatchValues {
                columns,
                rows: n,
                values,
            }],
        )
    };
    // A good one first, so the cases below fail for their own reason.
    let mut d = ready();
    let c = d
        .apply(frame("m", patch(vec![2], vec![(1, 1)], delta1.clone())))
        .expect("a good patch");
    let got = c.tables["sys"].parts[0].batch.column(1).clone();
    assert_eq!(&got, &i64s(vec![0, 1, 3, 3]));

    let null_name = values(
        &[(0, false)],
        vec![Arc::new(StringArray::from(vec![None::<&str>]))],
    );
    let two_rows = values(&[(1, true)], vec![i64s(vec![1, 2])]);
    let one_entry = || {
        vec![PatchValues {
            columns: vec![(1, 1)],
            rows: delta1.1,
            values: delta1.0.clone(),
        }]
    };
    let cases: Vec<(&str, GenerationFrame)> = vec![
        (
            "part not held",
            frame("zz", patch(vec![0], vec![(1, 1)], delta1.clone())),
        ),
        (
            "row out of range",
            frame("m", patch(vec![4], vec![(1, 1)], delta1.clone())),
        ),
        (
            "gaps past the end",
            frame("m", patch(vec![1, 2], vec![(1, 1)], two_rows.clone())),
        ),
        (
            "rows but no columns",
            frame("m", patch(vec![0], vec![], (vec![], 0))),
        ),
        (
            "column out of range",
            frame("m", patch(vec![0], vec![(3, 1)], delta1.clone())),
        ),
        (
            "columns not ascending",
            frame("m", patch(vec![0], vec![(2, 0), (1, 1)], delta1.clone())),
        ),
        (
            "delta on a string column",
            frame("m", patch(vec![0], vec![(0, 1)], delta1.clone())),
        ),
        (
            "fewer values than rows",
            frame("m", patch(vec![0, 0], vec![(1, 1)], delta1.clone())),
        ),
        (
            "values of another type",
            frame(
                "m",
                patch(
                    vec![0],
                    vec![(0, 0)],
                    values(&[(1, false)], vec![i64s(vec![1])]),
                ),
            ),
        ),
        (
            "NULL for a column without NULLs",
            frame("m", patch(vec![0], vec![(0, 0)], null_name)),
        ),
        (
            "garbage values",
            frame("m", patch(vec![0], vec![(1, 1)], (vec![1, 2, 3, 4, 5], 1))),
        ),
        (
            "values too short for their rows",
            frame("m", patch(vec![0], vec![(1, 1)], (vec![1], 2))),
        ),
        (
            "rows past any length",
            frame("m", patch(vec![0], vec![(1, 8)], (vec![1], u32::MAX))),
        ),
        (
            "removed out of range",
            frame(
                "m",
                (
                    PartRows::Patch {
                        rows: vec![],
                        values: None,
                        removed: vec![9],
                        added: vec![],
                    },
                    vec![],
                ),
            ),
        ),
        (
            "values left over",
            frame(
                "m",
                (
                    PartRows::Patch {
                        rows: vec![],
                        values: None,
                        removed: vec![],
                        added: vec![],
                    },
                    one_entry(),
                ),
            ),
        ),
        (
            "values not in the frame",
            frame(
                "m",
                (
                    PartRows::Patch {
                        rows: vec![0],
                        values: Some(1),
                        removed: vec![],
                        added: vec![],
                    },
                    one_entry(),
                ),
            ),
        ),
    ];
    for (what, f) in cases {
        let mut d = ready();
        match d.apply(f) {
            Err(LinkError::Protocol(_) | LinkError::Decode(_) | LinkError::Arrow(_)) => {}
            other => panic!("{what}: expected an error, got {other:?}"),
        }
        assert!(d.needs_full(), "{what}");
    }
    // The decoded values of a well-formed patch really are what was sent.
    let (_, back) = widen(&s, &[(1, 1)], delta1.1, &delta1.0).expect("values");
    assert_eq!(back.column(0), &i64s(vec![1]));
}

/// What a forwarding node (a TLA) sends on: the generation it got from its child, as its
/// own.
fn as_forwarded(c: super::ChildGeneration) -> crate::generation::Generation {
    crate::generation::Generation {
        id: c.id,
        round: c.round,
        tla_round: c.round,
        sealed_at: c.sealed_at,
        tables: c.tables,
        errors: Default::default(),
        machines: c.machines,
        clusters: c.clusters,
    }
}

/// A TLA in the middle (a forwarding decoder, then its own encoder): with random churn, its
/// parent always holds the child's rows, and the TLA forwards the child's patches as they
/// came rather than matching the parts again; after a reset it starts over in full.
#[test]
fn a_forwarding_node_passes_patches_on_and_its_parent_stays_in_step() {
    let s = schema();
    let ns = names(40);
    let mut rng = SmallRng::seed_from_u64(11);
    let mut parts: Vec<Vec<Row>> = (0..8)
        .map(|p| {
            (0..rng.random_range(1..30))
                .map(|i| (ns[(p * 5 + i) % 40], rng.random_range(0..1000), None))
                .collect()
        })
        .collect();
    let mut child = keyed(&["name"]);
    let mut tla_in = LinkDecoder::forwarding();
    let mut tla_out = keyed(&["name"]);
    let mut sql = LinkDecoder::new();
    let (mut forwarded, mut patches) = (0, 0);
    // Both parents hold the eight parts in this order after the first frame.
    let held: Vec<String> = (0..parts.len()).map(|i| format!("m{i}")).collect();
    for id in 1..120u64 {
        for rows in parts.iter_mut() {
            if rng.random_bool(0.5) {
                continue;
            }
            match rng.random_range(0..6) {
                0 if rows.len() > 1 => {
                    let i = rng.random_range(0..rows.len());
                    rows.remove(i);
                }
                1 => rows.push((ns[rng.random_range(0..40)], 0, Some(1.0))),
                _ => {
                    for r in rows.iter_mut() {
                        if rng.random_bool(0.3) {
                            r.1 += rng.random_range(1..50);
                        }
                    }
                }
            }
        }
        if id % 37 == 0 {
            // A parent that reconnects: the TLA's next frame is full, then patches again.
            tla_out.reset();
            sql = LinkDecoder::new();
        }
        let present = parts
            .iter()
            .enumerate()
            .map(|(i, rows)| part(&s, &format!("m{i}"), rows))
            .collect();
        let g = generation(id, vec![("sys", present)]);
        let f = child.encode(&g, &sys_only(), 8, 0).expect("child encode");
        let from_child: HashMap<String, PartRows> = listed_keys(&f.tables[0], &held)
            .into_iter()
            .zip(f.tables[0].parts.iter().map(|p| p.rows.clone()))
            .collect();
        let c = tla_in.apply(send(&f).0).expect("tla apply");
        assert_same(&c, &g, &sys_only());
        let at_tla = as_forwarded(c);
        let f = tla_out
            .encode(&at_tla, &sys_only(), 8, 0)
            .expect("tla encode");
        for (p, key) in f.tables[0]
            .parts
            .iter()
            .zip(listed_keys(&f.tables[0], &held))
        {
            if matches!(p.rows, PartRows::Patch { .. }) {
                patches += 1;
                forwarded += usize::from(from_child.get(&key) == Some(&p.rows));
            }
        }
        let at_sql = sql.apply(send(&f).0).expect("sql apply");
        assert_same(&at_sql, &g, &sys_only());
    }
    assert!(patches > 50, "{patches} patches");
    assert!(
        forwarded * 10 >= patches * 9,
        "{forwarded} of {patches} patches forwarded"
    );
}

/// The record of applied patches holds the parts weakly and forgets them once they are gone.
#[test]
fn forwarded_patches_are_forgotten_with_their_rows() {
    let s = schema();
    let ns = names(10);
    let rows: Vec<Row> = (0..10).map(|i| (ns[i], i as i64, None)).collect();
    let mut enc = keyed(&["name"]);
    let mut dec = LinkDecoder::forwarding();
    let mut next = rows.clone();
    let before = super::forward::recorded();
    for id in 1..3000u64 {
        next[(id % 10) as usize].1 += 1;
        let g = generation(id, vec![("sys", vec![part(&s, "m", &next)])]);
        let f = enc.encode(&g, &sys_only(), 1, 0).expect("encode");
        dec.apply(f).expect("apply");
    }
    // Other tests record concurrently; this one alone would leave one live entry.
    assert!(
        super::forward::recorded() < before + 2100,
        "{} entries kept",
        super::forward::recorded()
    );
}

/// The one part of `sys` in a decoded generation.
fn only_part(g: &super::ChildGeneration) -> Arc<Part> {
    g.tables["sys"].parts[0].clone()
}

#[test]
fn a_patch_is_recorded_until_the_next_frame_and_the_decoders_end() {
    let s = schema();
    let ns = names(10);
    let mut rows: Vec<Row> = (0..10).map(|i| (ns[i], i as i64, None)).collect();
    let mut enc = keyed(&["name"]);
    let mut dec = LinkDecoder::forwarding();
    let frame = |enc: &mut LinkEncoder, id: u64, rows: &[Row]| {
        let g = generation(id, vec![("sys", vec![part(&s, "m", rows)])]);
        enc.encode(&g, &sys_only(), 1, 0).expect("encode")
    };
    let base = only_part(&dec.apply(frame(&mut enc, 1, &rows)).expect("full"));
    rows[3].1 += 1;
    let patched = only_part(&dec.apply(frame(&mut enc, 2, &rows)).expect("patch"));
    // Looked up by these very parts: other tests' entries cannot answer for them.
    assert!(super::forward::find(&base, &patched).is_some(), "recorded");
    dec.apply(frame(&mut enc, 3, &rows)).expect("unchanged");
    assert!(
        super::forward::find(&base, &patched).is_none(),
        "forgotten at the next frame"
    );

    rows[4].1 += 1;
    let patched2 = only_part(&dec.apply(frame(&mut enc, 4, &rows)).expect("patch"));
    assert!(
        super::forward::find(&patched, &patched2).is_some(),
        "recorded"
    );
    drop(dec);
    assert!(
        super::forward::find(&patched, &patched2).is_none(),
        "forgotten with the decoder"
    );
}

#[test]
fn deltas_travel_in_the_narrowest_integer_that_holds_them() {
    let table = Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int32, false),
        Field::new("c", DataType::Utf8, true),
    ]);
    let columns = [(0, true), (1, true), (2, false)];
    let schema = patch_schema(&table, &columns).expect("schema");
    let cases: Vec<(Vec<i64>, Vec<i32>, u8, u8)> = vec![
        (vec![-128, 127, 0], vec![1, -1, 0], 1, 1),
        (vec![-129, 5, 0], vec![32_767, 0, 0], 2, 2),
        (vec![1 << 40, 0, 0], vec![-40_000, 0, 0], 8, 4),
        (vec![i64::MIN, i64::MAX, 0], vec![i32::MIN, 0, 0], 8, 4),
    ];
    for (a, b, wa, wb) in cases {
        let values = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(a.clone())),
                Arc::new(Int32Array::from(b.clone())),
                Arc::new(StringArray::from(vec![Some("x"), None, Some("y")])),
            ],
        )
        .expect("batch");
        let wire = narrow(&values, &columns, &mut IpcWriter::new()).expect("narrow");
        assert_eq!(wire.columns, vec![(0, wa), (1, wb), (2, 0)], "{a:?} {b:?}");
        let (back_columns, back) =
            widen(&table, &wire.columns, wire.rows, &wire.values).expect("widen");
        assert_eq!(back_columns, columns);
        assert_eq!(back, values, "exact after the round trip");
    }
    // A delta with a NULL (which `delta_of` never makes) is refused, not sent as values.
    let with_null = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("0", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
    )
    .expect("batch");
    assert!(matches!(
        narrow(&with_null, &[(0, true)], &mut IpcWriter::new()),
        Err(LinkError::Protocol(_))
    ));
    // A width the column's type cannot take, or no width at all, is refused (the bytes
    // are exactly what the width would need, so nothing else fails).
    for bad in [(1, 8), (1, 3), (0, 16)] {
        let bytes = vec![1u8; usize::from(bad.1)];
        match widen(&table, &[bad], 1, &bytes) {
            Err(LinkError::Protocol(e)) => assert!(e.contains("bytes per delta"), "{bad:?}: {e}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

/// A frame of a whole fleet (more parts than `threads::PARALLEL_FROM_PARTS`) has its tables
/// encoded and applied on several threads: through a forwarding node and on to its parent,
/// full first and then with every part changed, both parents hold exactly the child's rows,
/// and the forwarding node still passes the child's patches on.
#[test]
fn a_whole_fleets_frame_is_shared_among_threads_and_stays_exact() {
    let tables = ["load", "processes", "sys"];
    let per_table = crate::threads::PARALLEL_FROM_PARTS / 3 + 500;
    let keys: TableKeys = Arc::new(HashMap::from([
        ("sys".to_string(), vec!["name".to_string()]),
        ("processes".to_string(), vec!["name".to_string()]),
    ]));
    let wanted: BTreeSet<String> = tables.iter().map(|t| t.to_string()).collect();
    let s = schema();
    let ns = names(4);
    let fleet = |id: u64| {
        let parts = |t: usize| -> Vec<Part> {
            (0..per_table)
                .map(|m| {
                    // Every part changes from one generation to the next; some grow a row.
                    let v = (m as i64) * 7 + id as i64 * (t as i64 + 1);
                    let mut rows: Vec<Row> = vec![(ns[0], v, None), (ns[1], v + 1, Some(0.5))];
                    if (m as u64 + id).is_multiple_of(5) {
                        rows.push((ns[2 + m % 2], v, None));
                    }
                    let mut p = part(&s, &format!("10.{t}.{}.{}", m / 256, m % 256), &rows);
                    // Fewer sources than a test link allows (`times::MAX_LINK_SOURCES`).
                    p.sources[0].source = format!("publisher-{}", m % 100).into();
                    p
                })
                .collect()
        };
        generation(
            id,
            tables
                .iter()
                .enumerate()
                .map(|(t, n)| (*n, parts(t)))
                .collect(),
        )
    };
    let mut child = LinkEncoder::with_keys(keys.clone());
    let mut tla_in = LinkDecoder::forwarding();
    let mut tla_out = LinkEncoder::with_keys(keys);
    let mut sql = LinkDecoder::new();
    let mut forwarded = 0;
    for id in 1..=3u64 {
        let g = fleet(id);
        let f = child.encode(&g, &wanted, 0, 0).expect("child encode");
        assert_eq!(f.full, id == 1);
        let c = tla_in.apply(send(&f).0).expect("tla apply");
        assert_same(&c, &g, &wanted);
        let at_tla = as_forwarded(c);
        let out = tla_out.encode(&at_tla, &wanted, 0, 0).expect("tla encode");
        if id > 1 {
            let listed: usize = out.tables.iter().map(|t| t.parts.len()).sum();
            assert_eq!(listed, 3 * per_table, "every part changed and is listed");
            forwarded += kinds(&out).iter().filter(|k| k.2 == "patch").count();
        }
        let at_sql = sql.apply(send(&out).0).expect("sql apply");
        assert_same(&at_sql, &g, &wanted);
    }
    assert!(forwarded >= per_table, "{forwarded} patches passed on");
}
