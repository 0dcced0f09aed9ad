//! The link codec end to end: encoder, wire, decoder.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::ipc::{decode_batch, decode_schema, ipc_rows, sorted_rows, IpcWriter};
use super::{ChildGeneration, LinkDecoder, LinkEncoder};
use crate::generation::{GenTable, Generation, Part, SourceStamp};
use crate::link::frame::{decode_frame, encode_frame, Codec, DEFAULT_MAX_FRAME_BYTES};
use crate::link::wire::{
    GenerationFrame, IpcRows, Listing, PartFrame, PartId, PartRows, Sources, Stamps, TableFrame,
};
use crate::link::LinkError;
use crate::table::unix_millis;
use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub(super) type Row = (&'static str, i64, Option<f64>);

pub(super) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
    ]))
}

pub(super) fn batch_of(schema: &SchemaRef, rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
        ],
    )
    .expect("batch")
}

pub(super) fn part(schema: &SchemaRef, key: &str, rows: &[Row]) -> Part {
    Part::new(
        key.into(),
        batch_of(schema, rows),
        vec![SourceStamp {
            source: key.into(),
            published_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
        }],
    )
}

pub(super) fn generation(id: u64, tables: Vec<(&str, Vec<Part>)>) -> Generation {
    let s = schema();
    Generation {
        id,
        round: id + 100,
        tla_round: id + 100,
        sealed_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + id),
        tables: tables
            .into_iter()
            .map(|(n, parts)| {
                (
                    n.to_string(),
                    GenTable {
                        schema: s.clone(),
                        parts: parts.into_iter().map(Arc::new).collect(),
                    },
                )
            })
            .collect(),
        errors: BTreeMap::from([("pub-1".to_string(), "row 3: bad".to_string())]),
        machines: 0,
        clusters: 0,
    }
}

fn base_parts() -> Vec<Part> {
    let s = schema();
    vec![
        part(
            &s,
            "10.0.0.1",
            &[("a", 1, Some(0.5)), ("b", 2, None), ("c", 3, Some(1.5))],
        ),
        part(&s, "10.0.0.2", &[("d", 4, None)]),
        part(&s, "10.0.0.3", &[]),
    ]
}

fn all_tables() -> BTreeSet<String> {
    ["sys", "processes", "load"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// An encoder and decoder past their first (full) frame of sys and load.
fn linked() -> (BTreeSet<String>, LinkEncoder, LinkDecoder) {
    let wanted = all_tables();
    let mut enc = LinkEncoder::new();
    let mut dec = LinkDecoder::new();
    let g1 = generation(1, vec![("sys", base_parts()), ("load", base_parts())]);
    dec.apply(enc.encode(&g1, &wanted, 3, 0).expect("encode"))
        .expect("apply");
    (wanted, enc, dec)
}

/// Through the wire too, so the serde layer is exercised.
pub(super) fn send(frame: &GenerationFrame) -> (GenerationFrame, usize) {
    let bytes = encode_frame(frame, Codec::None).expect("encode frame");
    let back = decode_frame(&bytes[4..], DEFAULT_MAX_FRAME_BYTES).expect("decode frame");
    (back, bytes.len())
}

pub(super) fn assert_same(child: &ChildGeneration, g: &Generation, wanted: &BTreeSet<String>) {
    assert_eq!(child.id, g.id);
    assert_eq!(child.round, g.round);
    assert_eq!(child.sealed_at, g.sealed_at);
    let names: Vec<&String> = g.tables.keys().filter(|n| wanted.contains(*n)).collect();
    assert_eq!(child.tables.keys().collect::<Vec<_>>(), names);
    for (name, t) in &child.tables {
        let want = &g.tables[name];
        assert_eq!(t.schema, want.schema);
        assert_eq!(t.parts.len(), want.parts.len(), "{name}");
        for (a, b) in t.parts.iter().zip(&want.parts) {
            assert_eq!(a.key, b.key);
            assert_eq!(
                sorted_rows(&a.batch),
                sorted_rows(&b.batch),
                "{name}/{}",
                a.key
            );
            let stamps = |p: &Part| {
                p.sources
                    .iter()
                    .map(|s| (s.source.clone(), unix_millis(s.published_at)))
                    .collect::<Vec<_>>()
            };
            assert_eq!(stamps(a), stamps(b));
        }
    }
}

/// (table, key, kind) of every part listed; a part sent by its position shows as `@<skip>`.
pub(super) fn kinds(f: &GenerationFrame) -> Vec<(String, String, &'static str)> {
    f.tables
        .iter()
        .flat_map(|t| {
            let keys = listed_keys(t, &[]);
            t.parts.iter().zip(keys).map(|(p, key)| {
                let k = match p.rows {
                    PartRows::Full(_) => "full",
                    PartRows::InBlock(_) => "new",
                    PartRows::Unchanged => "unchanged",
                    PartRows::Diff { .. } => "diff",
                    PartRows::Patch { .. } => "patch",
                };
                (t.name.clone(), key, k)
            })
        })
        .collect()
}

/// The keys of `t`'s parts, those sent by position (`PartId::Held`) found in `held` (the
/// parent's keys of the table, in its order) as the decoder finds them; `@<skip>` where
/// `held` has no such position.
pub(super) fn listed_keys(t: &TableFrame, held: &[String]) -> Vec<String> {
    let mut at: Option<usize> = None;
    t.parts
        .iter()
        .map(|p| match &p.key {
            PartId::Key(k) => k.clone(),
            PartId::Held(skip) => {
                let i = at.map_or(0, |a| a + 1) + *skip as usize;
                at = Some(i);
                held.get(i).cloned().unwrap_or_else(|| format!("@{skip}"))
            }
        })
        .collect()
}

/// The part is unchanged in `f`: listed so, or left out of a table listing only changes;
/// `held`: the parent's keys of the table, in its order.
pub(super) fn unchanged_in(f: &GenerationFrame, table: &str, key: &str, held: &[String]) -> bool {
    f.tables.iter().filter(|t| t.name == table).any(|t| {
        let keys = listed_keys(t, held);
        match t.parts.iter().zip(&keys).find(|(_, k)| k.as_str() == key) {
            Some((p, _)) => matches!(p.rows, PartRows::Unchanged),
            None => {
                matches!(&t.listing, Listing::Changes { gone } if !gone.iter().any(|g| g == key))
            }
        }
    })
}

#[test]
fn full_roundtrip_then_unchanged() {
    let wanted = all_tables();
    let mut enc = LinkEncoder::new();
    let mut dec = LinkDecoder::new();
    let g1 = generation(1, vec![("sys", base_parts()), ("load", base_parts())]);
    let f1 = enc.encode(&g1, &wanted, 3, 1).expect("encode");
    assert!(f1.full);
    assert!(f1.tables.iter().all(|t| t.schema.is_some()));
    // New parts in a block; the one without rows alone, in full.
    assert!(kinds(&f1).iter().all(|k| matches!(k.2, "new" | "full")));
    let (f1, full_bytes) = send(&f1);
    let c1 = dec.apply(f1).expect("apply");
    assert_same(&c1, &g1, &wanted);
    assert_eq!((c1.machines, c1.clusters), (3, 1));
    assert_eq!(c1.errors, vec![("pub-1".into(), "row 3: bad".into())]);
    // Exact rows for full parts, in order.
    assert_eq!(
        c1.tables["sys"].parts[0].batch,
        g1.tables["sys"].parts[0].batch
    );

    // The same rows again, rebuilt (other buffers): content equality finds them.
    let g2 = generation(2, vec![("sys", base_parts()), ("load", base_parts())]);
    let f2 = enc.encode(&g2, &wanted, 3, 1).expect("encode");
    assert!(!f2.full);
    assert!(f2.tables.iter().all(|t| t.schema.is_none()));
    assert!(
        kinds(&f2).iter().all(|k| k.2 == "unchanged"),
        "{:?}",
        kinds(&f2)
    );
    let (f2, small_bytes) = send(&f2);
    assert!(
        small_bytes * 5 < full_bytes,
        "unchanged frame {small_bytes} bytes vs full {full_bytes}"
    );
    let c2 = dec.apply(f2).expect("apply");
    assert_same(&c2, &g2, &wanted);

    // Same buffers (a republished copy): the fast path.
    let g3 = Generation {
        id: 3,
        round: 3,
        tla_round: 3,
        sealed_at: g2.sealed_at,
        tables: g2.tables.clone(),
        errors: BTreeMap::new(),
        machines: 3,
        clusters: 1,
    };
    let f3 = enc.encode(&g3, &wanted, 3, 1).expect("encode");
    assert!(kinds(&f3).iter().all(|k| k.2 == "unchanged"));
    assert_same(&dec.apply(send(&f3).0).expect("apply"), &g3, &wanted);
}

#[test]
fn an_unchanged_part_is_shown_again_until_its_rows_or_times_change() {
    let (wanted, mut enc, mut dec) = linked();
    let s = schema();
    // The same rows in new buffers: every part unchanged, each shown as before.
    let g2 = generation(2, vec![("sys", base_parts()), ("load", base_parts())]);
    let c2 = dec
        .apply(send(&enc.encode(&g2, &wanted, 3, 0).expect("encode")).0)
        .expect("apply");
    let g3 = generation(3, vec![("sys", base_parts()), ("load", base_parts())]);
    let c3 = dec
        .apply(send(&enc.encode(&g3, &wanted, 3, 0).expect("encode")).0)
        .expect("apply");
    assert_same(&c3, &g3, &wanted);
    for (a, b) in c2.tables["sys"].parts.iter().zip(&c3.tables["sys"].parts) {
        assert!(Arc::ptr_eq(a, b), "part {} made anew", a.key);
    }
    // One part's rows change, another's source publishes again with the same rows.
    let mut parts = base_parts();
    parts[0] = part(
        &s,
        "10.0.0.1",
        &[("a", 1, Some(0.5)), ("b", 7, None), ("c", 3, Some(1.5))],
    );
    parts[1].sources[0].published_at += Duration::from_secs(20);
    let g4 = generation(4, vec![("sys", parts), ("load", base_parts())]);
    let c4 = dec
        .apply(send(&enc.encode(&g4, &wanted, 3, 0).expect("encode")).0)
        .expect("apply");
    assert_same(&c4, &g4, &wanted);
    let (old, new) = (&c3.tables["sys"].parts, &c4.tables["sys"].parts);
    assert!(!Arc::ptr_eq(&old[0], &new[0]), "changed rows");
    assert!(!Arc::ptr_eq(&old[1], &new[1]), "a new publish time");
    assert!(Arc::ptr_eq(&old[2], &new[2]), "unchanged");
    // The next round shows the new ones again as they are.
    let g5 = generation(
        5,
        vec![
            (
                "sys",
                g4.tables["sys"]
                    .parts
                    .iter()
                    .map(|p| Part::clone(p))
                    .collect(),
            ),
            ("load", base_parts()),
        ],
    );
    let c5 = dec
        .apply(send(&enc.encode(&g5, &wanted, 3, 0).expect("encode")).0)
        .expect("apply");
    assert_same(&c5, &g5, &wanted);
    for (a, b) in new.iter().zip(&c5.tables["sys"].parts) {
        assert!(Arc::ptr_eq(a, b), "part {} made anew", a.key);
    }
}

#[test]
fn a_part_with_its_own_time_sends_it_again_only_when_it_moves() {
    let (wanted, mut enc, mut dec) = linked();
    // 10.0.0.3's `load` sets its time on the link (the first part naming it); its `sys`
    // part is published `sys_at` seconds later, `load` `load_at` seconds later.
    let round = |id: u64, load_at: u64, sys_at: u64| {
        let moved = |by: u64| {
            let mut parts = base_parts();
            parts[2].sources[0].published_at += Duration::from_secs(by);
            parts
        };
        generation(id, vec![("sys", moved(sys_at)), ("load", moved(load_at))])
    };
    let mut sources_sent = |g: &Generation| {
        let f = enc.encode(g, &wanted, 3, 0).expect("encode");
        assert_same(&dec.apply(send(&f).0).expect("apply"), g, &wanted);
        let sys = f.tables.iter().find(|t| t.name == "sys").expect("sys");
        sys.parts
            .iter()
            .map(|p| match &p.sources {
                Sources::Held => "held".to_string(),
                Sources::Named(_) => "named".to_string(),
                Sources::Stamped(s) => format!("stamped {}", s[0].1 - 1_700_000_000_000),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(sources_sent(&round(2, 0, 1)), ["stamped 1000"]);
    assert!(sources_sent(&round(3, 0, 1)).is_empty(), "the same time");
    assert_eq!(sources_sent(&round(4, 0, 2)), ["stamped 2000"], "moved");
    assert_eq!(
        sources_sent(&round(5, 2, 2)),
        ["named"],
        "at the link's time"
    );
    assert!(sources_sent(&round(6, 3, 3)).is_empty(), "both moved");
}

#[test]
fn changed_row_is_one_removed_one_added_in_documented_order() {
    let wanted = all_tables();
    let s = schema();
    let rows: Vec<Row> = (0..50).map(|i| ("proc", i, Some(i as f64))).collect();
    let mut enc = LinkEncoder::new();
    let mut dec = LinkDecoder::new();
    let g1 = generation(1, vec![("sys", vec![part(&s, "m", &rows)])]);
    dec.apply(enc.encode(&g1, &wanted, 1, 0).expect("encode"))
        .expect("apply");

    let mut changed = rows.clone();
    changed[7] = ("proc", 7, Some(99.0));
    let g2 = generation(2, vec![("sys", vec![part(&s, "m", &changed)])]);
    let f2 = enc.encode(&g2, &wanted, 1, 0).expect("encode");
    match &f2.tables[0].parts[0].rows {
        PartRows::Diff { removed, added } => {
            assert_eq!(removed, &vec![7]);
            let added = decode_batch(added, &s).expect("added");
            assert_eq!(added, batch_of(&s, &[("proc", 7, Some(99.0))]));
        }
        other => panic!("expected a diff, got {other:?}"),
    }
    let c2 = dec.apply(send(&f2).0).expect("apply");
    assert_same(&c2, &g2, &wanted);
    // Old rows without index 7, in order, then the added row.
    let mut order = rows.clone();
    order.remove(7);
    order.push(("proc", 7, Some(99.0)));
    assert_eq!(c2.tables["sys"].parts[0].batch, batch_of(&s, &order));

    // A second change: indexes refer to the parent's order, which the encoder mirrors.
    let mut changed2 = changed.clone();
    changed2[7] = ("proc", 7, Some(100.0));
    changed2[20] = ("proc", 20, None);
    let g3 = generation(3, vec![("sys", vec![part(&s, "m", &changed2)])]);
    let f3 = enc.encode(&g3, &wanted, 1, 0).expect("encode");
    match &f3.tables[0].parts[0].rows {
        PartRows::Diff { removed, .. } => assert_eq!(removed, &vec![19, 49]),
        other => panic!("expected a diff, got {other:?}"),
    }
    assert_same(&dec.apply(send(&f3).0).expect("apply"), &g3, &wanted);

    // The child's order back to the original rows: the parent's differs, but as a
    // multiset they match, so only the changed rows travel.
    let g4 = generation(4, vec![("sys", vec![part(&s, "m", &rows)])]);
    let f4 = enc.encode(&g4, &wanted, 1, 0).expect("encode");
    match &f4.tables[0].parts[0].rows {
        PartRows::Diff { removed, added } => {
            assert_eq!(removed.len(), 2);
            assert_eq!(decode_batch(added, &s).expect("added").num_rows(), 2);
        }
        other => panic!("expected a diff, got {other:?}"),
    }
    assert_same(&dec.apply(send(&f4).0).expect("apply"), &g4, &wanted);
}

#[test]
fn rows_new_to_the_parent_are_encoded_as_the_frame_is_serialized() {
    let wanted = all_tables();
    let mut enc = LinkEncoder::new();
    let s = schema();
    let f1 = enc
        .encode(&generation(1, vec![("sys", base_parts())]), &wanted, 3, 0)
        .expect("encode");
    // A full copy: every part in the table's one block, as batches still.
    assert!(matches!(
        f1.tables[0].parts[..],
        [
            PartFrame {
                rows: PartRows::InBlock(_),
                ..
            },
            _,
            _
        ]
    ));
    assert_eq!(f1.late_rows().len(), 1);
    assert_eq!(
        f1.late_rows()[0].len(),
        2,
        "the part without rows is in no block"
    );
    // One part changes, one is new: only the new one's rows wait for serialization.
    let mut parts = base_parts();
    parts[1] = part(&s, "10.0.0.2", &[("d", 5, None)]);
    parts.push(part(&s, "10.0.0.4", &[("e", 6, None)]));
    let f2 = enc
        .encode(&generation(2, vec![("sys", parts.clone())]), &wanted, 4, 0)
        .expect("encode");
    let kinds: Vec<&str> = f2.tables[0]
        .parts
        .iter()
        .map(|p| match &p.rows {
            PartRows::InBlock(1) => "new",
            PartRows::Full(IpcRows::Bytes(_)) => "bytes",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["bytes", "new"]);
    assert_eq!(f2.late_rows(), [&[parts[3].batch.clone()][..]]);
    // Serialized, late rows are the very bytes the eager encoding gives.
    for f in [&f1, &f2] {
        let (back, _) = send(f);
        assert!(back.late_rows().is_empty());
        for (sent, got) in f.tables.iter().zip(&back.tables) {
            assert_eq!(sent.parts, got.parts);
            assert_eq!(sent.blocks.len(), got.blocks.len());
            for (sent, got) in sent.blocks.iter().zip(&got.blocks) {
                let IpcRows::Batches(b) = sent else {
                    panic!("a block of batches: {sent:?}");
                };
                assert_eq!(Some(&ipc_rows(b).expect("encode")[..]), got.bytes());
            }
        }
    }
}

#[test]
fn only_changes_are_listed_while_the_order_holds() {
    let (wanted, mut enc, mut dec) = linked();
    let s = schema();
    // One part's rows change, another's sources only; the third stays as it was.
    let mut parts = base_parts();
    parts[1] = part(&s, "10.0.0.2", &[("d", 5, None)]);
    parts[2].sources[0].published_at += Duration::from_secs(1);
    parts.push(part(&s, "10.0.0.4", &[("e", 6, None)]));
    let g2 = generation(2, vec![("sys", parts.clone()), ("load", base_parts())]);
    let f2 = enc.encode(&g2, &wanted, 4, 0).expect("encode");
    let sys = f2.tables.iter().find(|t| t.name == "sys").expect("sys");
    assert_eq!(sys.listing, Listing::Changes { gone: vec![] });
    // Held parts go by their position (the first listed is the second held), new ones by key.
    let positions: Vec<&PartId> = sys.parts.iter().map(|p| &p.key).collect();
    assert_eq!(
        positions,
        [
            &PartId::Held(1),
            &PartId::Held(0),
            &PartId::Key("10.0.0.4".into())
        ]
    );
    let held: Vec<String> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        .map(String::from)
        .into();
    let keys = listed_keys(sys, &held);
    let listed: Vec<(&str, &str, bool)> = sys
        .parts
        .iter()
        .zip(&keys)
        .map(|(p, key)| {
            let sources = match p.sources {
                Sources::Held => "held",
                Sources::Named(_) => "named",
                Sources::Stamped(_) => "stamped",
            };
            (key.as_str(), sources, matches!(p.rows, PartRows::Unchanged))
        })
        .collect();
    // 10.0.0.3 publishes `load` at its old time (first in the frame: the link's time) and
    // `sys` a second later: that part carries its own time.
    assert_eq!(
        listed,
        vec![
            ("10.0.0.2", "held", false),
            ("10.0.0.3", "stamped", true),
            ("10.0.0.4", "named", false)
        ]
    );
    assert_eq!(
        f2.stamps,
        Stamps {
            new: vec![("10.0.0.4".to_string(), 2)],
            ..Stamps::default()
        },
        "ms before the seal"
    );
    let load = f2.tables.iter().find(|t| t.name == "load").expect("load");
    assert!(load.parts.is_empty(), "nothing changed in load");
    assert_same(&dec.apply(send(&f2).0).expect("apply"), &g2, &wanted);

    // A part gone and the order of the rest changed: every part listed, in the new order.
    parts.remove(0);
    parts.swap(0, 1);
    let g3 = generation(3, vec![("sys", parts), ("load", base_parts())]);
    let f3 = enc.encode(&g3, &wanted, 3, 0).expect("encode");
    let sys = f3.tables.iter().find(|t| t.name == "sys").expect("sys");
    assert_eq!(sys.listing, Listing::Every);
    assert_eq!(sys.parts.len(), 3);
    assert!(sys.parts.iter().all(|p| p.sources == Sources::Held));
    assert_same(&dec.apply(send(&f3).0).expect("apply"), &g3, &wanted);
    assert!(!f3.is_full_copy());

    // The parent's order is the child's again: back to changes only, here one part gone.
    let mut parts: Vec<Part> = g3.tables["sys"]
        .parts
        .iter()
        .map(|p| Part::clone(p))
        .collect();
    parts.remove(1);
    let g4 = generation(4, vec![("sys", parts), ("load", base_parts())]);
    let f4 = enc.encode(&g4, &wanted, 2, 0).expect("encode");
    let sys = f4.tables.iter().find(|t| t.name == "sys").expect("sys");
    assert_eq!(
        sys.listing,
        Listing::Changes {
            gone: vec!["10.0.0.2".into()]
        }
    );
    assert!(sys.parts.is_empty());
    assert_same(&dec.apply(send(&f4).0).expect("apply"), &g4, &wanted);
}

#[test]
fn a_table_whose_first_parts_come_later_comes_as_a_full_copy() {
    let wanted = all_tables();
    let mut enc = LinkEncoder::new();
    let mut dec = LinkDecoder::new();
    let g1 = generation(1, vec![("sys", vec![])]);
    let f1 = enc.encode(&g1, &wanted, 0, 0).expect("encode");
    assert!(!f1.is_full_copy(), "no rows yet");
    dec.apply(send(&f1).0).expect("apply");
    let g2 = generation(2, vec![("sys", base_parts())]);
    let f2 = enc.encode(&g2, &wanted, 3, 0).expect("encode");
    assert_eq!(f2.tables[0].listing, Listing::Every);
    assert!(
        f2.is_full_copy(),
        "the first parts of the link: its full copy"
    );
    assert_same(&dec.apply(send(&f2).0).expect("apply"), &g2, &wanted);
}

#[test]
fn reordered_rows_are_unchanged() {
    let wanted = all_tables();
    let s = schema();
    let rows: Vec<Row> = vec![("a", 1, None), ("b", 2, None), ("c", 3, None)];
    let mut enc = LinkEncoder::new();
    let mut dec = LinkDecoder::new();
    let g1 = generation(1, vec![("sys", vec![part(&s, "m", &rows)])]);
    dec.apply(enc.encode(&g1, &wanted, 1, 0).expect("encode"))
        .expect("apply");
    let mut rev = rows.clone();
    rev.reverse();
    let g2 = generation(2, vec![("sys", vec![part(&s, "m", &rev)])]);
    let f2 = enc.encode(&g2, &wanted, 1, 0).expect("encode");
    assert!(unchanged_in(&f2, "sys", "m", &["m".to_string()]));
    let c2 = dec.apply(f2).expect("apply");
    // The parent keeps its order.
    assert_eq!(c2.tables["sys"].parts[0].batch, batch_of(&s, &rows));
    assert_same(&c2, &g2, &wanted);
}

#[test]
fn duplicate_rows_match_as_a_multiset() {
    let wanted = all_tables();
    let s = schema();
    let (a, b) = (("a", 1, None), ("b", 2, Some(2.0)));
    let steps: Vec<Vec<Row>> = vec![
        vec![a, a, b, a, b, b, b, b],
        vec![a, b, b, a, b, b, b, b, b], // one a fewer, one b more
        vec![a, a, a, a, b, b, b, b, b],
        vec![b, b, b, b, b, b, b, a, a, a, a, a],
        vec![a, b, b, b, b, b, b, b, a, a, a, a], // reordered: unchanged
    ];
    let mut enc = LinkEncoder::new();
    let mut dec = LinkDecoder::new();
    for (i, rows) in steps.iter().enumerate() {
        let g = generation(i as u64, vec![("sys", vec![part(&s, "m", rows)])]);
        let f = enc.encode(&g, &wanted, 1, 0).expect("encode");
        if i == 1 {
            match &f.tables[0].parts[0].rows {
                PartRows::Diff { removed, added } => {
                    assert_eq!(removed.len(), 1);
                    assert_eq!(decode_batch(added, &s).expect("added").num_rows(), 2);
                }
                other => panic!("expected a diff, got {other:?}"),
            }
        }
        if i == 4 {
            assert!(unchanged_in(&f, "sys", "m", &["m".to_string()]));
        }
        let c = dec.apply(send(&f).0).expect("apply");
        assert_same(&c, &g, &wanted);
        assert_eq!(c.tables["sys"].parts[0].batch.num_rows(), rows.len());
    }
}

#[test]
fn everything_changed_is_sent_full() {
    let wanted = all_tables();
    let s = schema();
    let mut enc = LinkEncoder::new();
    let g1 = generation(
        1,
        vec![(
            "sys",
            vec![part(&s, "m", &[("a", 1, None), ("b", 2, None)])],
        )],
    );
    enc.encode(&g1, &wanted, 1, 0).expect("encode");
    let g2 = generation(
        2,
        vec![(
            "sys",
            vec![part(&s, "m", &[("c", 1, None), ("d", 2, None)])],
        )],
    );
    assert_eq!(
        kinds(&enc.encode(&g2, &wanted, 1, 0).expect("encode"))[0].2,
        "full"
    );
}

#[test]
fn parts_and_tables_disappear_and_come_back() {
    let (wanted, mut enc, mut dec) = linked();

    let mut parts = base_parts();
    parts.remove(1);
    let g2 = generation(2, vec![("sys", parts)]);
    let f2 = enc.encode(&g2, &wanted, 2, 0).expect("encode");
    assert_eq!(f2.tables.len(), 1);
    // Only the change: one part gone, the others stay where they are.
    assert_eq!(
        f2.tables[0].listing,
        Listing::Changes {
            gone: vec!["10.0.0.2".into()]
        }
    );
    assert!(f2.tables[0].parts.is_empty());
    let c2 = dec.apply(send(&f2).0).expect("apply");
    assert_same(&c2, &g2, &wanted);
    assert!(!c2.tables.contains_key("load"));

    // Back again: both sides forgot them, so they come in full with their schema.
    let g3 = generation(3, vec![("sys", base_parts()), ("load", base_parts())]);
    let f3 = enc.encode(&g3, &wanted, 3, 0).expect("encode");
    let k = kinds(&f3);
    assert!(k.contains(&("sys".into(), "10.0.0.2".into(), "new")));
    assert!(k.contains(&("sys".into(), "10.0.0.1".into(), "unchanged")));
    assert!(k
        .iter()
        .filter(|k| k.0 == "load")
        .all(|k| matches!(k.2, "new" | "full")));
    assert!(f3
        .tables
        .iter()
        .find(|t| t.name == "load")
        .is_some_and(|t| t.schema.is_some()));
    assert_same(&dec.apply(send(&f3).0).expect("apply"), &g3, &wanted);

    // A table no longer wanted is not sent; when wanted again it comes in full.
    let only_sys: BTreeSet<String> = ["sys".to_string()].into();
    let f4 = enc.encode(&g3, &only_sys, 3, 0).expect("encode");
    assert_eq!(f4.tables.len(), 1);
    assert_same(&dec.apply(send(&f4).0).expect("apply"), &g3, &only_sys);
    let f5 = enc.encode(&g3, &wanted, 3, 0).expect("encode");
    assert!(kinds(&f5)
        .iter()
        .filter(|k| k.0 == "load")
        .all(|k| matches!(k.2, "new" | "full")));
    assert_same(&dec.apply(send(&f5).0).expect("apply"), &g3, &wanted);
}

#[test]
fn schema_change_sends_the_new_schema_and_full_parts() {
    let wanted = all_tables();
    let mut enc = LinkEncoder::new();
    let mut dec = LinkDecoder::new();
    let g1 = generation(1, vec![("sys", base_parts())]);
    dec.apply(enc.encode(&g1, &wanted, 3, 0).expect("encode"))
        .expect("apply");

    let s2 = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("value", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
        Field::new("extra", DataType::Utf8, true),
    ]));
    let b = RecordBatch::try_new(
        s2.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Float64Array::from(vec![Some(0.5)])),
            Arc::new(StringArray::from(vec![Some("new")])),
        ],
    )
    .expect("batch");
    let mut g2 = generation(2, vec![]);
    g2.tables.insert(
        "sys".into(),
        GenTable {
            schema: s2.clone(),
            parts: vec![Arc::new(Part::new("10.0.0.1".into(), b.clone(), vec![]))],
        },
    );
    let f2 = enc.encode(&g2, &wanted, 1, 0).expect("encode");
    assert!(!f2.full);
    assert!(f2.tables[0].schema.is_some());
    assert_eq!(kinds(&f2)[0].2, "new");
    let c2 = dec.apply(send(&f2).0).expect("apply");
    assert_eq!(c2.tables["sys"].schema, s2);
    assert_eq!(c2.tables["sys"].parts[0].batch, b);
}

#[test]
fn reset_sends_a_full_frame() {
    let (wanted, mut enc, mut dec) = linked();
    enc.reset();
    let g2 = generation(2, vec![("sys", base_parts())]);
    let f2 = enc.encode(&g2, &wanted, 3, 0).expect("encode");
    assert!(f2.full);
    assert!(f2.tables.iter().all(|t| t.schema.is_some()));
    assert!(kinds(&f2).iter().all(|k| matches!(k.2, "new" | "full")));
    let c2 = dec.apply(f2).expect("apply");
    assert_same(&c2, &g2, &wanted);
    // And a new decoder (a reconnection) takes the next full frame as well.
    enc.reset();
    let g3 = generation(3, vec![("sys", base_parts()), ("load", base_parts())]);
    let c3 = LinkDecoder::new()
        .apply(enc.encode(&g3, &wanted, 3, 0).expect("encode"))
        .expect("apply");
    assert_same(&c3, &g3, &wanted);
}

/// Many generations of random edits, duplicates included: the parent's copy always
/// equals the child's generation as a multiset of rows per part.
#[test]
fn random_churn_stays_in_step() {
    let wanted = all_tables();
    let s = schema();
    let names = ["a", "b", "c", "d"];
    let mut rng = SmallRng::seed_from_u64(42);
    let mut parts: Vec<Vec<Row>> = (0..6)
        .map(|_| {
            (0..rng.random_range(0..12))
                .map(|_| (names[rng.random_range(0..4)], rng.random_range(0..3), None))
                .collect()
        })
        .collect();
    let mut enc = LinkEncoder::new();
    let mut dec = LinkDecoder::new();
    let mut seen = BTreeSet::new();
    for id in 1..200 {
        for rows in parts.iter_mut() {
            if rng.random_bool(0.5) {
                continue;
            }
            for _ in 0..rng.random_range(0..4) {
                let row = (names[rng.random_range(0..4)], rng.random_range(0..3), None);
                match rng.random_range(0..3) {
                    0 if !rows.is_empty() => {
                        let i = rng.random_range(0..rows.len());
                        rows.remove(i);
                    }
                    1 if !rows.is_empty() => {
                        let i = rng.random_range(0..rows.len());
                        rows[i] = row;
                    }
                    _ => rows.push(row),
                }
            }
        }
        let present: Vec<Part> = parts
            .iter()
            .enumerate()
            .filter(|(i, _)| (id + i) % 7 != 0) // parts come and go
            .map(|(i, rows)| part(&s, &format!("m{i}"), rows))
            .collect();
        let g = generation(id as u64, vec![("sys", present)]);
        let f = enc.encode(&g, &wanted, 6, 0).expect("encode");
        seen.extend(kinds(&f).into_iter().map(|k| k.2));
        let c = dec.apply(send(&f).0).expect("apply");
        assert_same(&c, &g, &wanted);
    }
    assert_eq!(seen.len(), 4, "every kind of part was exercised: {seen:?}");
}

#[test]
fn decoder_refuses_inconsistent_frames() {
    let wanted = all_tables();
    let s = schema();
    let mut enc = LinkEncoder::new();
    let g1 = generation(1, vec![("sys", base_parts())]);
    let full = enc.encode(&g1, &wanted, 3, 0).expect("encode");

    let frame = |full: bool, schema: Option<Vec<u8>>, rows: PartRows| GenerationFrame {
        id: 2,
        round: 2,
        sealed_at_ms: 0,
        full,
        tables: vec![TableFrame {
            name: "sys".into(),
            listing: Listing::Every,
            schema,
            parts: vec![PartFrame {
                key: "10.0.0.1".into(),
                sources: Sources::Named(vec![]),
                rows,
            }],
            patches: vec![],
            blocks: vec![],
        }],
        errors: vec![],
        stamps: Stamps::default(),
        machines: 1,
        clusters: 0,
    };
    let ready = || {
        let mut d = LinkDecoder::new();
        d.apply(full.clone()).expect("full frame");
        d
    };
    let added = IpcWriter::new()
        .batch(&batch_of(&s, &[("z", 9, None)]))
        .expect("ipc");
    let other_schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let other_batch = IpcWriter::new()
        .batch(
            &RecordBatch::try_new(
                other_schema.clone(),
                vec![Arc::new(Int64Array::from(vec![1]))],
            )
            .expect("batch"),
        )
        .expect("ipc");
    let schema_bytes = IpcWriter::new().schema(&s).expect("schema");
    // A diff frame whose `sys` lists only `parts` as changes, and `gone`.
    let changes = |gone: Vec<String>, parts: Vec<PartFrame>| GenerationFrame {
        tables: vec![TableFrame {
            name: "sys".into(),
            listing: Listing::Changes { gone },
            schema: None,
            parts,
            patches: vec![],
            blocks: vec![],
        }],
        ..frame(false, None, PartRows::Unchanged)
    };
    let held_part = || frame(false, None, PartRows::Unchanged).tables[0].parts[0].clone();
    let by_position = |skip: u32| PartFrame {
        key: PartId::Held(skip),
        sources: Sources::Held,
        rows: PartRows::Unchanged,
    };
    let new_part = |sources: Sources| PartFrame {
        key: "10.9.9.9".into(),
        sources,
        rows: PartRows::Full(added.clone().into()),
    };

    let cases: Vec<(&str, LinkDecoder, GenerationFrame)> = vec![
        (
            "diff frame first",
            LinkDecoder::new(),
            frame(false, None, PartRows::Unchanged),
        ),
        (
            "unchanged part not held",
            ready(),
            GenerationFrame {
                tables: vec![TableFrame {
                    name: "sys".into(),
                    listing: Listing::Every,
                    schema: None,
                    parts: vec![PartFrame {
                        key: "10.9.9.9".into(),
                        sources: Sources::Named(vec![]),
                        rows: PartRows::Unchanged,
                    }],
                    patches: vec![],
                    blocks: vec![],
                }],
                ..frame(false, None, PartRows::Unchanged)
            },
        ),
        (
            "more sources than a link keeps",
            ready(),
            GenerationFrame {
                stamps: Stamps {
                    new: (0..=1_000).map(|i| (format!("s{i}"), 0)).collect(),
                    ..Stamps::default()
                },
                ..frame(false, None, PartRows::Unchanged)
            },
        ),
        (
            "a source without a time",
            ready(),
            changes(
                vec![],
                vec![new_part(Sources::Named(vec!["nowhere".into()]))],
            ),
        ),
        (
            "gone part not held",
            ready(),
            changes(vec!["10.9.9.9".into()], vec![]),
        ),
        (
            "part listed and gone",
            ready(),
            changes(vec!["10.0.0.1".into()], vec![held_part()]),
        ),
        (
            "held part listed twice",
            ready(),
            changes(vec![], vec![held_part(), held_part()]),
        ),
        (
            "sources as held for a part not held",
            ready(),
            changes(vec![], vec![new_part(Sources::Held)]),
        ),
        (
            "a position past the parts held",
            ready(),
            changes(vec![], vec![by_position(0), by_position(u32::MAX)]),
        ),
        (
            "a held part by its key and by its position",
            ready(),
            changes(vec![], vec![held_part(), by_position(0)]),
        ),
        (
            "index out of range",
            ready(),
            frame(
                false,
                None,
                PartRows::Diff {
                    removed: vec![3],
                    added: added.clone(),
                },
            ),
        ),
        (
            "indexes not ascending",
            ready(),
            frame(
                false,
                None,
                PartRows::Diff {
                    removed: vec![1, 0],
                    added: added.clone(),
                },
            ),
        ),
        (
            "no schema",
            LinkDecoder::new(),
            frame(true, None, PartRows::Full(added.clone().into())),
        ),
        (
            "garbage schema",
            LinkDecoder::new(),
            frame(
                true,
                Some(vec![
                    0xff, 0xff, 0xff, 0xff, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
                ]),
                PartRows::Full(added.clone().into()),
            ),
        ),
        (
            "garbage rows",
            LinkDecoder::new(),
            frame(
                true,
                Some(schema_bytes.clone()),
                PartRows::Full(vec![1, 2, 3, 4, 5, 6, 7, 8, 9].into()),
            ),
        ),
        (
            "a part in no block",
            LinkDecoder::new(),
            frame(true, Some(schema_bytes.clone()), PartRows::InBlock(1)),
        ),
        (
            "rows of another schema",
            ready(),
            frame(false, None, PartRows::Full(other_batch.clone().into())),
        ),
        (
            "diff rows of another schema",
            ready(),
            frame(
                false,
                None,
                PartRows::Diff {
                    removed: vec![],
                    added: other_batch.clone(),
                },
            ),
        ),
    ];
    for (what, mut dec, f) in cases {
        match dec.apply(f) {
            Err(LinkError::Protocol(_) | LinkError::Decode(_) | LinkError::Arrow(_)) => {}
            other => panic!("{what}: expected an error, got {other:?}"),
        }
        // Out of step: only a full frame is taken now.
        assert!(dec.needs_full(), "{what}");
        assert!(
            dec.apply(frame(false, None, PartRows::Unchanged)).is_err(),
            "{what}"
        );
        assert_same(&dec.apply(full.clone()).expect("full frame"), &g1, &wanted);
    }

    // Corrupt IPC bytes inside a valid frame, byte by byte: errors, never a panic.
    assert!(matches!(full.tables[0].parts[0].rows, PartRows::InBlock(_)));
    let good = ipc_rows(&[g1.tables["sys"].parts[0].batch.clone()]).expect("encode");
    let mut rng = SmallRng::seed_from_u64(3);
    for i in 0..400 {
        let mut bad = good.clone();
        let at = rng.random_range(0..bad.len());
        bad[at] = rng.random();
        if i % 4 == 0 {
            bad.truncate(at);
        }
        let _ = LinkDecoder::new().apply(frame(
            true,
            Some(schema_bytes.clone()),
            PartRows::Full(bad.into()),
        ));
        let mut bad_schema = schema_bytes.clone();
        let at = rng.random_range(0..bad_schema.len());
        bad_schema[at] = rng.random();
        let _ = LinkDecoder::new().apply(frame(
            true,
            Some(bad_schema),
            PartRows::Full(good.clone().into()),
        ));
    }
}

#[test]
fn encoder_refuses_a_part_unlike_its_table_and_resets() {
    let wanted = all_tables();
    let mut enc = LinkEncoder::new();
    let g1 = generation(1, vec![("sys", base_parts())]);
    enc.encode(&g1, &wanted, 3, 0).expect("encode");
    let mut g2 = generation(2, vec![("sys", base_parts())]);
    let other = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    if let Some(t) = g2.tables.get_mut("sys") {
        t.parts.push(Arc::new(Part::new(
            "odd".into(),
            RecordBatch::try_new(other.clone(), vec![Arc::new(Int64Array::from(vec![1]))])
                .expect("batch"),
            vec![],
        )));
    }
    assert!(matches!(
        enc.encode(&g2, &wanted, 3, 0),
        Err(LinkError::Protocol(_))
    ));
    assert!(enc.encode(&g1, &wanted, 3, 0).expect("encode").full);
}

#[test]
fn dictionary_columns_roundtrip() {
    use datafusion::arrow::array::DictionaryArray;
    use datafusion::arrow::datatypes::Int32Type;
    let dict: DictionaryArray<Int32Type> = vec!["x", "y", "x", "z"].into_iter().collect();
    let s = Arc::new(Schema::new(vec![Field::new(
        "d",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        true,
    )]));
    let b = RecordBatch::try_new(s.clone(), vec![Arc::new(dict)]).expect("batch");
    let mut ipc = IpcWriter::new();
    let schema = decode_schema(&ipc.schema(&s).expect("schema")).expect("schema back");
    assert_eq!(schema, s);
    assert_eq!(
        decode_batch(&ipc.batch(&b).expect("ipc"), &schema).expect("back"),
        b
    );
}
