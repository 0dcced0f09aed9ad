use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::link::wire::{Listing, PartFrame, PartRows, Sources, Stamps};
use crate::tier::children::tests::gen;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn config(children: &[&str], tables: &[&str]) -> TlaChildrenConfig {
    TlaChildrenConfig {
        children: strings(children),
        tables: strings(tables),
        timeout: Duration::from_millis(200),
        ..TlaChildrenConfig::default()
    }
}

#[test]
fn tables_are_dealt_by_name_between_the_children() {
    let s = split(&strings(&["sys", "load", "disk", "sys"]), 2);
    assert_eq!(s, vec![set(&["disk", "sys"]), set(&["load"])]);
    assert_eq!(split(&strings(&["a", "b"]), 1), vec![set(&["a", "b"])]);
    assert!(split(&strings(&["a"]), 0).is_empty());
    // Three tables, three children: one each; order of the list does not matter.
    assert_eq!(
        split(&strings(&["c", "a", "b"]), 3),
        vec![set(&["a"]), set(&["b"]), set(&["c"])]
    );
}

#[test]
fn config_is_checked() {
    assert!(config(&["127.0.0.1:7301"], &["sys"]).validate().is_ok());
    assert!(TlaChildrenConfig::default().validate().is_ok());
    assert!(
        config(&["127.0.0.1:7301"], &[]).validate().is_err(),
        "no tables"
    );
    assert!(config(&["nohost"], &["sys"]).validate().is_err(), "no port");
    assert!(config(&["127.0.0.1:1", "127.0.0.1:1"], &["sys"])
        .validate()
        .is_err());
}

fn up(d: &Deferral, address: &str) -> (mpsc::Receiver<ToChild>, oneshot::Receiver<String>) {
    let (tx, rx) = mpsc::channel(16);
    let (kill, killed) = oneshot::channel();
    d.link_up(address, format!("tla-child@{address}"), tx, kill);
    (rx, killed)
}

fn deferral(children: &[&str], tables: &[&str]) -> Arc<Deferral> {
    Deferral::new(
        config(children, tables),
        "tla@test".into(),
        Arc::new(Metrics::default()),
    )
}

#[test]
fn only_children_that_are_up_take_tables_and_a_down_childs_share_is_the_tlas() {
    let d = deferral(&["a:1", "b:1"], &["sys", "load", "disk"]);
    assert!(
        d.assignment().is_empty(),
        "nobody up yet: the TLA merges all"
    );
    let epoch = *d.epoch().borrow();
    let (_ra, killed_a) = up(&d, "a:1");
    let (_rb, _kb) = up(&d, "b:1");
    assert!(*d.epoch().borrow() > epoch, "cluster links redial");
    assert_eq!(d.assignment().deferred(), set(&["disk", "load", "sys"]));

    let before = *d.epoch().borrow();
    d.link_down("a:1", "connection refused");
    assert_eq!(*d.epoch().borrow(), before + 1);
    assert_eq!(
        d.assignment().deferred(),
        set(&["load"]),
        "b keeps its share"
    );
    let views = d.views();
    let a = views.iter().find(|v| v.address == "a:1").expect("a");
    assert!(!a.up && a.failures == 1);
    assert_eq!(a.last_error.as_deref(), Some("connection refused"));
    assert_eq!(a.share, set(&["disk", "sys"]));
    assert!(
        killed_a.blocking_recv().is_ok(),
        "a's session is told to end"
    );

    // Down twice counts once.
    d.link_down("a:1", "again");
    assert_eq!(*d.epoch().borrow(), before + 1);
    assert_eq!(d.metrics.tla_child_failures.load(Ordering::Relaxed), 1);

    // a returns: it takes its share back.
    let (_ra, _ka) = up(&d, "a:1");
    assert_eq!(d.assignment().deferred(), set(&["disk", "load", "sys"]));
}

#[test]
fn a_reconfiguration_changes_the_shares_and_stops_unlisted_children() {
    let d = deferral(&["a:1", "b:1"], &["sys", "load"]);
    let added = d.reconfigure(config(&["b:1", "c:1"], &["sys", "load"]));
    assert_eq!(added, vec!["c:1".to_string()]);
    assert!(!d.listed("a:1") && d.listed("b:1"));
    let views = d.views();
    let share = |a: &str| {
        views
            .iter()
            .find(|v| v.address == a)
            .map(|v| v.share.clone())
    };
    assert_eq!(share("b:1"), Some(set(&["load"])));
    assert_eq!(share("c:1"), Some(set(&["sys"])));
    let epoch = *d.epoch().borrow();
    assert!(d
        .reconfigure(config(&["b:1", "c:1"], &["sys", "load"]))
        .is_empty());
    assert_eq!(*d.epoch().borrow(), epoch, "no change, no redial");
}

fn table_frame(name: &str) -> TableFrame {
    TableFrame {
        name: name.into(),
        schema: None,
        listing: Listing::Every,
        parts: vec![PartFrame {
            key: "m".into(),
            sources: Sources::Held,
            rows: PartRows::Unchanged,
        }],
        patches: Vec::new(),
        blocks: vec![],
    }
}

#[tokio::test]
async fn a_cluster_frame_is_split_between_the_tla_and_its_children() {
    let d = deferral(&["a:1", "b:1"], &["sys", "load"]);
    let (mut ra, _ka) = up(&d, "a:1");
    let (mut rb, _kb) = up(&d, "b:1");
    let mut frame = GenerationFrame {
        id: 3,
        round: 7,
        sealed_at_ms: 0,
        full: false,
        tables: vec![table_frame("sys"), table_frame("disk")],
        errors: Vec::new(),
        stamps: Stamps {
            new: vec![("m".into(), 0)],
            ..Stamps::default()
        },
        machines: 70,
        clusters: 1,
    };
    d.assignment().forward("c1", 9, &mut frame).await;
    let names: Vec<&str> = frame.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["disk"], "the TLA keeps what is not deferred");
    match ra.try_recv().expect("a's frame") {
        ToChild::Defer {
            cluster,
            session,
            frame,
        } => {
            assert_eq!((cluster.as_str(), session, frame.round), ("c1", 9, 7));
            assert!(
                frame.tables.is_empty(),
                "a (load) gets a frame without tables: load left"
            );
        }
        other => panic!("{other:?}"),
    }
    match rb.try_recv().expect("b's share") {
        ToChild::Defer { frame, .. } => {
            assert_eq!(frame.tables[0].name, "sys");
            assert_eq!(
                frame.stamps.new,
                vec![("m".to_string(), 0)],
                "the link's source times"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_child_that_does_not_answer_in_time_is_replaced_in_the_same_seal() {
    let d = deferral(&["a:1", "b:1"], &["sys", "load"]);
    let (mut ra, _ka) = up(&d, "a:1");
    let (mut rb, _kb) = up(&d, "b:1");
    let assignment = d.assignment();
    let dd = d.clone();
    // b answers its merge; a stays silent.
    let answer = tokio::spawn(async move {
        if let Some(ToChild::Seal { id, tables, .. }) = rb.recv().await {
            assert_eq!(tables, ["sys"]);
            let mut g = gen(7, "10.0.0.1", &["sys"]);
            g.id = id;
            dd.deliver("b:1", g);
        }
    });
    let wanted = set(&["sys", "load", "disk"]);
    let merged = d
        .merge(&assignment, 42, 7, &wanted, &strings(&["c1"]))
        .await;
    answer.await.expect("b answered");
    assert!(matches!(ra.try_recv(), Ok(ToChild::Seal { id: 42, .. })));
    assert_eq!(merged.complete.keys().collect::<Vec<_>>(), ["sys"]);
    assert_eq!(merged.incomplete, set(&["load"]), "a's table is carried");
    assert_eq!(
        d.assignment().deferred(),
        set(&["load", "sys"]),
        "late once: a keeps load"
    );
    // Late LATE_IN_A_ROW seals in a row: the TLA takes a's table (b is not asked: its
    // table is not wanted).
    let only_load = set(&["load"]);
    for id in 43..42 + u64::from(LATE_IN_A_ROW) {
        let merged = d
            .merge(&assignment, id, 7, &only_load, &strings(&["c1"]))
            .await;
        assert_eq!(merged.incomplete, only_load);
    }
    assert_eq!(
        d.assignment().deferred(),
        set(&["sys"]),
        "the TLA merges load from now on"
    );
    let a = d
        .views()
        .into_iter()
        .find(|v| v.address == "a:1")
        .expect("a");
    assert!(a
        .last_error
        .is_some_and(|e| e.contains("[tla_children] timeout")));
}
