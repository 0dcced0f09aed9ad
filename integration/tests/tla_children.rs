//! TLA children (OSR 3.5, deferring), real processes on loopback: `queryd simulate` serves
//! three clusters to a TLA (tla-sql) that defers `sys` and `load_info` to two `queryd
//! tla-child` processes, and to a TLA without children. Answers for the deferred tables are
//! the same at both; one child killed, the table stays complete and `query_links` says the
//! TLA merges its share; restarted, the child takes its share back. Every process is killed
//! when the test ends.

use std::time::{Duration, Instant};

use query_integration::fleet::toml_list;
use query_integration::{Node, Simulator, Workspace};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);
const MACHINES: u64 = 60;

fn tla_config(ip: &str, clusters: &[String], children: &[String]) -> String {
    let deferral = match children.is_empty() {
        true => String::new(),
        false => format!(
            "[tla_children]\nchildren = {}\ntables = [\"sys\", \"load_info\"]\ntimeout = \"800ms\"\n",
            toml_list(children)
        ),
    };
    format!(
        "[node]\nmachine_ip = \"{ip}\"\ncluster = \"top\"\n\n[generation]\ninterval = \"1s\"\noffset = \"500ms\"\n\n\
         [host]\nenabled = false\n\n[link]\nchildren = {}\ndrop_after = \"10s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n\n\
         [requests]\nwait = \"30s\"\n\n{deferral}",
        toml_list(clusters)
    )
}

fn start_child(ws: &Workspace, address: &str) -> Node {
    ws.start(
        "tla-child",
        &format!("[host]\nenabled = false\n\n[link]\nlisten = \"{address}\"\n"),
    )
}

/// The deferred tables' summary and the round it was computed on.
fn summary(node: &Node) -> Option<(u64, Value)> {
    let (status, a) = node.sql(
        "SELECT (SELECT COUNT(DISTINCT machine_ip) FROM sys), (SELECT SUM(uptime) FROM sys), \
         (SELECT COUNT(*) FROM load_info), (SELECT SUM(hits) FROM load_info)",
    );
    (status == 200).then(|| {
        (
            a["generation"]["round"].as_u64().unwrap_or(0),
            a["rows"].clone(),
        )
    })
}

/// `query_links` rows of the TLA children: (address, connected, deferred, merged_by, frames).
fn child_links(tla: &Node) -> Vec<(String, bool, String, String, u64)> {
    let (status, a) = tla.sql(
        "SELECT address, connected, deferred, merged_by, frames FROM query_links \
         WHERE direction = 'tla-child' ORDER BY address",
    );
    assert_eq!(status, 200, "{a}");
    a["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or_default().to_string(),
                r[1].as_bool().unwrap_or(false),
                r[2].as_str().unwrap_or_default().to_string(),
                r[3].as_str().unwrap_or_default().to_string(),
                r[4].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn machines_in_sys(node: &Node) -> Option<u64> {
    let (status, a) = node.sql("SELECT COUNT(DISTINCT machine_ip) FROM sys");
    (status == 200).then(|| a["rows"][0][0].as_u64())?
}

#[test]
fn a_tla_with_two_children_answers_as_one_without_and_survives_losing_one() {
    let sim = Simulator::start(&[
        "--machines",
        &MACHINES.to_string(),
        "--clusters",
        "3",
        "--serve",
        "clusters",
        "--listen",
        "127.0.61.1:7600",
        "--interval",
        "1s",
        "--offset",
        "100ms",
    ]);
    let children = vec![
        "127.0.61.11:7510".to_string(),
        "127.0.61.12:7510".to_string(),
    ];
    let (ws1, ws2) = (Workspace::new(), Workspace::new());
    let _child1 = start_child(&ws1, &children[0]);
    let child2 = start_child(&ws2, &children[1]);
    let ws_tla = Workspace::new();
    let tla = ws_tla.start(
        "tla-sql",
        &tla_config("127.0.61.5", &sim.children, &children),
    );
    let ws_ref = Workspace::new();
    let reference = ws_ref.start("tla-sql", &tla_config("127.0.61.6", &sim.children, &[]));

    // Both children take their share (split by table name: load_info, then sys).
    tla.eventually(LIMIT, "both children merging", || {
        // The query makes the deferred tables wanted (requested from the clusters).
        summary(&tla);
        let links = child_links(&tla);
        (links.len() == 2 && links.iter().all(|l| l.1 && l.4 > 0)).then_some(())
    });
    let links = child_links(&tla);
    assert_eq!(
        links
            .iter()
            .map(|l| (l.0.as_str(), l.2.as_str()))
            .collect::<Vec<_>>(),
        [
            (children[0].as_str(), "load_info"),
            (children[1].as_str(), "sys")
        ]
    );
    assert!(links[1].3.starts_with("tla-child@"), "{links:?}");

    // The same round gives the same answer with and without children.
    tla.eventually(LIMIT, "equal answers for one round", || {
        let (round, with) = summary(&tla)?;
        let (round_ref, without) = summary(&reference)?;
        (round == round_ref && with[0][0] == json!(MACHINES) && with == without).then_some(())
    });

    // The child merging sys dies: every answer still has the whole fleet.
    drop(child2);
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut answers = 0;
    while Instant::now() < deadline {
        assert_eq!(
            machines_in_sys(&tla),
            Some(MACHINES),
            "sys whole after the child died"
        );
        answers += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answers > 10);
    let links = child_links(&tla);
    assert!(!links[1].1, "the dead child is down: {links:?}");
    assert!(
        links[1].3.starts_with("tla-sql@"),
        "the TLA merges sys itself: {links:?}"
    );
    assert!(links[0].1, "the other child keeps its share: {links:?}");
    // And fresh rows, not only the carried copy: the answers follow the reference's.
    tla.eventually(LIMIT, "equal answers without the child", || {
        let (round, with) = summary(&tla)?;
        let (round_ref, without) = summary(&reference)?;
        (round == round_ref && with == without).then_some(())
    });

    // It returns (same address): it takes sys back, and answers stay whole.
    let child2 = start_child(&ws2, &children[1]);
    let before = links[1].4;
    tla.eventually(LIMIT, "the child back, merging sys", || {
        let links = child_links(&tla);
        (links[1].1 && links[1].3.starts_with("tla-child@") && links[1].4 > before).then_some(())
    });
    for _ in 0..10 {
        assert_eq!(machines_in_sys(&tla), Some(MACHINES));
        std::thread::sleep(Duration::from_millis(200));
    }
    tla.eventually(LIMIT, "equal answers with the child back", || {
        let (round, with) = summary(&tla)?;
        let (round_ref, without) = summary(&reference)?;
        (round == round_ref && with == without).then_some(())
    });
    drop(child2);
}
