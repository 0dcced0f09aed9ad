//! The web console in a real browser: headless Chromium (Debian's package, installed by
//! `make test`) loads the page from a running node, runs a query through the page's own
//! JavaScript and renders the results and the table list.

use std::process::Command;
use std::time::Duration;

use query_integration::{queryd_bin, Workspace};

fn chromium() -> String {
    for c in ["chromium", "/usr/bin/chromium", "chromium-browser"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.to_string();
        }
    }
    panic!("headless Chromium is needed for the console test: `make test-deps` installs it");
}

/// Loads `url` in headless Chromium and returns the DOM after scripts ran.
fn dump_dom(url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,800",
        "--virtual-time-budget=15000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn encode(sql: &str) -> String {
    sql.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn console_runs_a_query_and_lists_tables_in_a_real_browser() {
    let ws = Workspace::new();
    let node = ws.start("demo", "[generation]\ninterval = \"2s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 100\nclusters = 4\n");

    // Healthy means a generation is served; the demo hierarchy needs a round or two more
    // before its published tables (and the views over them) reach the top node.
    node.eventually(
        Duration::from_secs(60),
        "published tables at the top",
        || {
            let tables = node.get_json("/tables");
            let names: Vec<&str> = tables["tables"]
                .as_array()?
                .iter()
                .filter_map(|t| t["name"].as_str())
                .collect();
            ["sys", "region_data", "machine_memory"]
                .iter()
                .all(|n| names.contains(n))
                .then_some(())
        },
    );

    let sql = "SELECT continent, continent_name FROM continent_data ORDER BY continent";
    let dom = dump_dom(&node.url(&format!("/#sql={}", encode(sql))), None);
    assert!(
        dom.contains("class=\"results\""),
        "results table rendered:\n{dom}"
    );
    assert!(
        dom.contains("<th title=\"string\">continent_name</th>"),
        "{dom}"
    );
    assert!(dom.contains("<td>Antarctica</td>"), "{dom}");
    assert!(dom.contains("7 rows"), "status line: {dom}");
    // The side bar lists published, static and view tables.
    assert!(dom.contains("<span>sys</span>"), "{dom}");
    assert!(dom.contains("<span>region_data</span>"), "{dom}");
    assert!(dom.contains("<span>machine_memory</span>"), "{dom}");

    // Errors show in the page, not as a broken page.
    let dom = dump_dom(
        &node.url(&format!("/#sql={}", encode("DROP TABLE sys"))),
        None,
    );
    assert!(
        dom.contains("400 not_read_only: DROP TABLE statements are not allowed"),
        "{dom}"
    );

    // A screenshot for people to look at (not asserted beyond being written).
    let shot = std::env::temp_dir().join("query-console.png");
    dump_dom(
        &node.url(&format!(
            "/#sql={}",
            encode("SELECT * FROM hits_per_continent ORDER BY hits DESC")
        )),
        Some(&shot),
    );
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000));
}

/// With tokens, the page asks for one, uses one given to it (kept in the tab's
/// sessionStorage, sent as Bearer), and never runs a query from a link by itself.
#[test]
fn console_asks_for_a_token_and_never_runs_a_linked_query_by_itself() {
    let out = Command::new(queryd_bin())
        .args(["token", "--name", "console", "--domain", "*"])
        .output()
        .expect("queryd token");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let secret = text
        .lines()
        .find(|l| l.starts_with("qt_"))
        .expect("secret")
        .to_string();
    let entry = text
        .split_once("[[token]]")
        .map(|(_, e)| format!("[[token]]{e}"))
        .expect("entry");
    let ws = Workspace::new();
    std::fs::write(ws.path("tokens.toml"), entry).expect("tokens file");
    let node = ws.start(
        "demo",
        "[generation]\ninterval = \"2s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 20\nclusters = 2\n\n[auth]\ntokens_file = \"tokens.toml\"\n",
    );

    // No token: the page loads (it is static) and asks for one; nothing is listed.
    let dom = dump_dom(&node.url("/"), None);
    assert!(dom.contains("data-auth=\"needed\""), "{dom}");
    assert!(dom.contains("this node needs a token"), "{dom}");
    assert!(!dom.contains("<span>continent_data</span>"), "{dom}");

    // With the token: the tables are listed; the linked query waits for a click.
    let sql = "SELECT continent, continent_name FROM continent_data ORDER BY continent";
    let dom = dump_dom(
        &node.url(&format!("/#token={secret}&sql={}", encode(sql))),
        None,
    );
    assert!(
        dom.contains("<span>continent_data</span>"),
        "tables listed: {dom}"
    );
    assert!(dom.contains("press Run to run it"), "{dom}");
    assert!(
        !dom.contains("class=\"results\""),
        "not run without a click: {dom}"
    );
    assert!(
        !dom.contains(&secret),
        "the token is not shown in the page: {dom}"
    );
}
