//! `queryd simulate` feeding real nodes over TCP: simulated clusters straight into a
//! TLA/SQL node, and simulated machines into real cluster proxies under it. Checked through
//! the SQL node's HTTP API. Every process is killed when its test ends.

use std::time::Duration;

use query_integration::fleet::{free_port, toml_list};
use query_integration::{Node, Simulator, Workspace};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// `[link] children`, drop and backoff settings for a parent of `children`.
fn link(children: &[String]) -> String {
    format!(
        "[link]\nchildren = {}\ndrop_after = \"10s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n",
        toml_list(children)
    )
}

fn node_section(ip: &str, offset_ms: u64) -> String {
    format!(
        "[node]\nmachine_ip = \"{ip}\"\ncluster = \"top\"\n\n[generation]\ninterval = \"1s\"\noffset = \"{offset_ms}ms\"\n\n[host]\nenabled = false\n"
    )
}

/// Waits until the SQL node sees `machines` machines in `clusters` clusters, in `/health`
/// and in the rows of `sys`.
fn until_fleet(sql: &Node, machines: u64, clusters: u64) {
    sql.eventually(LIMIT, "the fleet at the SQL node", || {
        let h = sql.get_json("/health");
        let (_, a) = sql.sql("SELECT COUNT(DISTINCT machine_ip), COUNT(DISTINCT cluster) FROM sys");
        (h["machines"] == machines
            && h["clusters"] == clusters
            && a["rows"] == json!([[machines, clusters]]))
        .then_some(())
    });
}

#[test]
fn simulated_clusters_feed_a_tla() {
    let sim = Simulator::start(&[
        "--machines",
        "60",
        "--clusters",
        "3",
        "--serve",
        "clusters",
        "--listen",
        "127.0.51.1:7600",
        "--interval",
        "1s",
        "--offset",
        "100ms",
    ]);
    assert_eq!(
        sim.children,
        ["127.0.51.1:7600", "127.0.51.1:7601", "127.0.51.1:7602"]
    );
    let ws = Workspace::new();
    let sql = ws.start(
        "tla-sql",
        &format!(
            "{}\n{}\n[requests]\nwait = \"30s\"\n",
            node_section("127.0.51.5", 500),
            link(&sim.children)
        ),
    );
    until_fleet(&sql, 60, 3);
    // A paper query over the simulated rows and the static tables.
    let (status, answer) = sql.sql(
        "SELECT continent_name, SUM(hits) AS hits FROM load_info, region_data, continent_data \
         WHERE load_info.georegion = region_data.id AND region_data.continent = continent_data.continent \
         GROUP BY 1 ORDER BY hits DESC",
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        !answer["rows"].as_array().expect("rows").is_empty(),
        "{answer}"
    );
}

#[test]
fn simulated_machines_feed_real_cluster_proxies() {
    let sim = Simulator::start(&[
        "--machines",
        "8",
        "--clusters",
        "2",
        "--serve",
        "machines",
        "--listen",
        "127.0.52.1:7600",
        "--interval",
        "1s",
        "--offset",
        "100ms",
    ]);
    assert_eq!(sim.children.len(), 8);
    // Machines come in fleet order, a cluster's together: 4 per proxy.
    let mut proxies = Vec::new();
    let mut proxy_links = Vec::new();
    let workspaces: Vec<Workspace> = (0..2).map(|_| Workspace::new()).collect();
    for (c, ws) in workspaces.iter().enumerate() {
        let ip = format!("127.0.52.{}", 101 + c);
        let listen = format!("{ip}:{}", free_port(&ip));
        proxies.push(ws.start(
            "cluster-proxy",
            &format!(
                "{}\n{}listen = \"{listen}\"\n",
                node_section(&ip, 300),
                link(&sim.children[c * 4..c * 4 + 4])
            ),
        ));
        proxy_links.push(listen);
    }
    let ws = Workspace::new();
    let sql = ws.start(
        "tla-sql",
        &format!(
            "{}\n{}\n[requests]\nwait = \"30s\"\n",
            node_section("127.0.52.5", 500),
            link(&proxy_links)
        ),
    );
    until_fleet(&sql, 8, 2);
    for p in &proxies {
        let h = p.get_json("/health");
        assert_eq!(h["machines"], 4, "{h}");
    }
}

/// A full copy past `[link] max_frame_bytes` is refused with the key named in the log, and
/// the node goes on answering: a full copy grows with the fleet, so this is the first limit
/// a larger fleet meets.
#[test]
fn a_full_copy_past_max_frame_bytes_names_the_key() {
    let sim = Simulator::start(&[
        "--machines",
        "20",
        "--clusters",
        "1",
        "--serve",
        "clusters",
        "--listen",
        "127.0.54.1:7600",
        "--interval",
        "1s",
        "--offset",
        "100ms",
    ]);
    let ws = Workspace::new();
    let prewarm = ws.path("prewarm.toml");
    std::fs::write(&prewarm, "tables = [\"sys\", \"processes\"]\n").expect("prewarm");
    let sql = ws.start(
        "tla-sql",
        &format!(
            "{}\n{}max_frame_bytes = 4096\nmax_request_frame_bytes = 4096\n\n[requests]\nprewarm = \"{}\"\n",
            node_section("127.0.54.5", 500),
            link(&sim.children),
            prewarm.display()
        ),
    );
    // In the log, as the link is dialled again after each refusal.
    let why = sql.eventually(LIMIT, "the refusal in the log", || {
        let log = std::fs::read_to_string(&sql.stderr_log).unwrap_or_default();
        log.lines()
            .find(|l| l.contains("exceeds 4096 bytes ([link] max_frame_bytes)"))
            .map(str::to_string)
    });
    assert!(why.contains("raise the key on this node"), "{why}");
    let (status, a) = sql.sql("SELECT 1");
    assert_eq!((status, &a["rows"]), (200, &json!([[1]])), "{a}");
    assert_eq!(
        sql.get_json("/health")["machines"],
        0,
        "no copy came through"
    );
}
