//! The web console in a real browser: headless Chromium (Debian's package, installed by
//! `make test`) loads the page from a running node, runs a query through the page's own
//! JavaScript and renders the results and the table list; its Alerts view lists what fires,
//! and a click (a real mouse event, over Chromium's DevTools protocol) runs an alert's SQL.

use std::time::Duration;

use query_integration::browser::{dump_dom, encode, Browser};
use query_integration::{repo, Workspace};
use serde_json::{json, Value};

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
    // Hovering a table shows its description and each column's (the title attribute).
    for hover in [
        "title=\"Machine identity, memory, CPU load and uptime; one row per machine\n",
        "\nhostname string: Host name\n",
        "title=\"Geographic regions\nid int64: Region id\n",
        "title=\"Memory use per machine, percent of total\n",
        "\nhostname string: Host name (from sys.hostname)\n",
        "title=\"Every column of every table a query can name here",
    ] {
        assert!(dom.contains(hover), "hover text {hover:?} in {dom}");
    }

    // Errors show in the page, not as a broken page.
    let dom = dump_dom(
        &node.url(&format!("/#sql={}", encode("DROP TABLE sys"))),
        None,
    );
    assert!(
        dom.contains("400 not_read_only: DROP TABLE statements are not allowed"),
        "{dom}"
    );

    // A node without [alerts] says so in the Alerts view, not with an error.
    let dom = dump_dom(&node.url("/#alerts"), None);
    assert!(
        dom.contains("This node evaluates no alerts (its config has no [alerts] section)."),
        "{dom}"
    );
    assert!(dom.contains("data-alerts=\"none\""), "{dom}");

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
    let (secret, entry) = query_integration::make_token(&["--name", "console", "--domain", "*"]);
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

/// The Alerts view lists firing instances first with their priority, description and
/// runbook link; a click on "Run its SQL" puts the alert's SQL in the query box and runs
/// it; opening the view runs nothing by itself.
#[test]
fn console_alerts_view_lists_firing_instances_and_a_click_runs_the_sql() {
    let ws = Workspace::new();
    let mut alerts =
        std::fs::read_to_string(repo().join("ops/alerts.toml")).expect("read ops/alerts.toml");
    // Text that must stay text: markup in a description, a runbook that is not http(s).
    alerts.push_str(
        "\n[[alert]]\nname = \"odd_text\"\nsql = \"SELECT 1 AS one\"\npriority = \"email\"\n\
         description = \"<b id=injected>not markup</b>\"\nrunbook = \"javascript:alert(1)\"\n",
    );
    std::fs::write(ws.path("alerts.toml"), alerts).expect("write alerts.toml");
    let node = ws.start(
        "demo",
        "[generation]\ninterval = \"2s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 200\nclusters = 4\n\n\
         [alerts]\ndefinitions = \"alerts.toml\"\nstate = \"alerts.db\"\n",
    );
    // The demo's 4 clusters are not the 20 that the shipped static table expects.
    let (sql, firing_key) = node.eventually(
        Duration::from_secs(90),
        "a firing instance of machines_missing",
        || {
            let report = node.get_json("/alerts");
            let a = report["alerts"]
                .as_array()?
                .iter()
                .find(|a| a["name"] == "machines_missing")?
                .clone();
            let key = a["instances"]
                .as_array()?
                .iter()
                .find(|i| i["state"] == "firing")?["key_text"]
                .as_str()?
                .to_string();
            Some((a["sql"].as_str()?.to_string(), key))
        },
    );

    let mut browser = Browser::open(&node.url("/#alerts"));
    // Every row of the instance list: its cells' text and its links.
    let rows = browser.wait_for(
        "the instance list",
        "(() => { if (document.body.dataset.alerts !== 'loaded') return null; \
         const rows = [...document.querySelectorAll('#alert-instances tbody tr')]; \
         return rows.length ? rows.map((tr) => ({ cells: [...tr.cells].map((c) => c.textContent), \
         links: [...tr.querySelectorAll('a')].map((a) => a.href) })) : null; })()",
    );
    let rows = rows.as_array().expect("rows");
    let row = rows
        .iter()
        .find(|r| r["cells"][1] == "machines_missing" && r["cells"][2] == firing_key.as_str())
        .unwrap_or_else(|| panic!("{firing_key} listed: {rows:?}"));
    let cells: Vec<&str> = row["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| c.as_str().unwrap_or(""))
        .collect();
    assert_eq!(cells[0], "firing", "{row}");
    assert!(cells[3].contains("reporting="), "values: {row}");
    assert!(cells[5].contains(" ago)"), "since: {row}");
    assert_eq!(cells[6], "page", "priority: {row}");
    assert_eq!(cells[7], "query", "owner: {row}");
    assert!(cells[9].starts_with("A cluster with under 90%"), "{row}");
    assert_eq!(
        row["links"],
        json!(["https://wiki.example.org/runbooks/machines-missing"]),
        "runbook link: {row}"
    );
    // Firing first: no row in another state comes before a firing one.
    let states: Vec<&str> = rows.iter().filter_map(|r| r["cells"][0].as_str()).collect();
    let first_other = states.iter().position(|s| *s != "firing");
    assert!(
        first_other.is_none_or(|i| states[i..].iter().all(|s| *s != "firing")),
        "{states:?}"
    );
    // The count is in the tab; markup and a javascript: runbook stay text.
    let tab = browser.eval("document.getElementById('tab-alerts').textContent");
    let tab = tab.as_ref().and_then(Value::as_str).unwrap_or("");
    assert!(
        tab.starts_with("Alerts (") && tab.contains(" firing"),
        "{tab}"
    );
    let odd = rows
        .iter()
        .find(|r| r["cells"][1] == "odd_text")
        .unwrap_or_else(|| panic!("odd_text listed: {rows:?}"));
    assert_eq!(odd["cells"][9], "<b id=injected>not markup</b>", "{odd}");
    assert_eq!(odd["cells"][8], "javascript:alert(1)", "{odd}");
    assert_eq!(odd["links"], json!([]), "not a link: {odd}");
    assert_eq!(
        browser.eval("document.getElementById('injected') === null && document.querySelectorAll('a[href^=\"javascript\"]').length === 0"),
        Some(json!(true))
    );
    // The per-alert list shows the last evaluation.
    let evaluated = browser.wait_for(
        "machines_missing's last evaluation",
        "(() => { const b = document.querySelector('#alert-defs button[data-alert=\"machines_missing\"]'); \
         return b && [...b.closest('tr').cells].map((c) => c.textContent); })()",
    );
    assert!(
        evaluated[4].as_str().is_some_and(|t| t.contains(" ago)")),
        "{evaluated}"
    );
    assert!(
        evaluated[5].as_str().is_some_and(|t| t.ends_with(" ms")),
        "{evaluated}"
    );
    // Opening the view ran no query.
    assert_eq!(
        browser.eval("document.body.dataset.state === undefined && document.getElementById('results').childElementCount === 0"),
        Some(json!(true))
    );

    // A click on "Run its SQL": the query view, the alert's SQL in the box, its rows.
    browser.click("#alert-defs button[data-alert=\"machines_missing\"]");
    browser.wait_for("the query to run", "document.body.dataset.state === 'done'");
    let page = browser
        .eval(
            "({ view: document.body.dataset.view, sql: document.getElementById('sql').value, \
             hidden: document.getElementById('alerts-view').hidden, \
             heads: [...document.querySelectorAll('#results th')].map((th) => th.textContent), \
             rows: [...document.querySelectorAll('#results tbody tr')].map((tr) => tr.cells[0].textContent), \
             status: document.getElementById('status').textContent, \
             error: document.getElementById('error').textContent })",
        )
        .expect("page state");
    assert_eq!(page["view"], "query", "{page}");
    assert_eq!(page["hidden"], true, "{page}");
    assert_eq!(page["sql"], sql.trim(), "{page}");
    assert_eq!(page["error"], "", "{page}");
    assert_eq!(
        page["heads"],
        json!(["cluster", "expected", "reporting"]),
        "{page}"
    );
    let cluster = firing_key.trim_start_matches("cluster=");
    assert!(
        page["rows"]
            .as_array()
            .is_some_and(|r| r.iter().any(|c| c == cluster)),
        "{cluster} in the rows: {page}"
    );
    assert!(
        page["status"]
            .as_str()
            .is_some_and(|s| s.contains(" rows in ")),
        "{page}"
    );
    drop(browser);

    // A screenshot of the view for people to look at (not asserted beyond being written).
    let shot = std::env::temp_dir().join("alerts-console.png");
    dump_dom(&node.url("/#alerts"), Some(&shot));
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000));
}
