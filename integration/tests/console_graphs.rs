//! The console's Graphs page in a real browser (headless Chromium): a node keeps a good and
//! a broken report; the page draws the good one from `report.<name>` (the points uPlot holds
//! are checked against the rows `/sql` returns), shows the broken one's error, switches
//! ranges, and the query view's Chart button draws an answer with a time column.

use std::collections::BTreeSet;
use std::time::Duration;

use query_integration::browser::{dump_dom, encode, Browser};
use query_integration::{Node, Workspace};
use serde_json::{json, Value};

const REPORTS: &str = r#"
[[report]]
name = "fleet_memory"
title = "Fleet memory use"
sql = "SELECT cluster, sum(memtotal - memavailable) / 1048576.0 AS used_gib FROM sys GROUP BY cluster"
every = "1s"
retention = "1d"
series = "cluster"
values = ["used_gib"]
unit = "GiB"

# Fails at every run: the table does not exist (it could appear later, so it loads).
[[report]]
name = "broken"
sql = "SELECT 1.0 AS v FROM no_such_table"
every = "1s"
retention = "1h"
values = ["v"]
"#;

/// The rows of a `/sql` answer (panics on an error answer).
fn rows(node: &Node, sql: &str) -> Vec<Vec<Value>> {
    let (status, body) = node.sql(sql);
    assert_eq!(status, 200, "{sql}: {body}");
    serde_json::from_value(body["rows"].clone()).expect("rows")
}

/// The state of the chart element of report `name`: what the page says it drew, and the
/// arrays its uPlot holds (`plots`: the page's element-to-chart map).
fn chart_of(name: &str) -> String {
    format!(
        "(() => {{ const c = document.querySelector('.chart[data-report=\"{name}\"]'); \
         if (!c || !c.dataset.points) return null; const u = plots.get(c); \
         return {{ points: Number(c.dataset.points), series: JSON.parse(c.dataset.series), \
         data: u ? u.data.map((a) => [...a]) : null, \
         note: c.closest('.report').querySelector('.chart-note').textContent, \
         status: document.getElementById('graphs-status').textContent }}; }})()"
    )
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("names")
        .iter()
        .map(|s| s.as_str().expect("name").to_string())
        .collect()
}

#[test]
fn graphs_page_draws_report_rows_and_a_query_answer_in_a_real_browser() {
    let ws = Workspace::new();
    std::fs::write(ws.path("reports.toml"), REPORTS).expect("write reports.toml");
    let node = ws.start(
        "demo",
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 100\nclusters = 4\n\n\
         [history]\ndir = \"history\"\nreports = \"reports.toml\"\n",
    );

    // Rows of at least 3 runs in report.fleet_memory, and the broken report's error.
    let generations = "SELECT count(DISTINCT generation) AS n FROM report.fleet_memory";
    let last_error = node.eventually(
        Duration::from_secs(120),
        "3 runs of fleet_memory and a failed run of broken",
        || {
            let (status, body) = node.sql(generations);
            (status == 200 && body["rows"][0][0].as_i64()? >= 3).then_some(())?;
            let list = node.get_json("/reports");
            let broken = list["reports"]
                .as_array()?
                .iter()
                .find(|r| r["name"] == "broken")?;
            broken["last_error"].as_str().map(str::to_string)
        },
    );
    let clusters: Vec<String> = rows(
        &node,
        "SELECT DISTINCT cluster FROM report.fleet_memory ORDER BY cluster",
    )
    .iter()
    .map(|r| r[0].as_str().expect("cluster").to_string())
    .collect();
    assert!(clusters.len() >= 2, "{clusters:?}");
    let times = "SELECT count(DISTINCT generation_time) FROM report.fleet_memory";
    let before = rows(&node, times)[0][0].as_u64().expect("count");

    // The Graphs page: the good report drawn, one line per cluster, its points those of
    // report.fleet_memory (no more than it holds after the page drew).
    let mut browser = Browser::open(&node.url("/#graphs"));
    let chart = browser.wait_for(
        "fleet_memory drawn with 3 points or more",
        &format!(
            // Drawn, and not between two loads (the page reloads the list every 10 s).
            "(() => {{ const c = {}; return c && c.points >= 3 && !c.status.startsWith('loading') ? c : null; }})()",
            chart_of("fleet_memory")
        ),
    );
    let after = rows(&node, times)[0][0].as_u64().expect("count");
    let points = chart["points"].as_u64().expect("points");
    assert!(
        before <= points && points <= after,
        "{before} <= {points} <= {after}: {chart}"
    );
    let mut drawn = names(&chart["series"]);
    drawn.sort();
    assert_eq!(drawn, clusters, "one line per cluster: {chart}");
    assert_eq!(chart["note"], "", "{chart}");
    assert!(
        chart["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("2 reports, range 1h")),
        "{chart}"
    );

    // The values drawn are the stored ones: every point of every line against report's rows.
    let data = chart["data"].as_array().expect("uPlot's data");
    let x: Vec<f64> = data[0]
        .as_array()
        .expect("x")
        .iter()
        .map(|v| v.as_f64().expect("time"))
        .collect();
    assert_eq!(x.len() as u64, points);
    assert!(x.windows(2).all(|w| w[0] < w[1]), "times ascending: {x:?}");
    let stored = rows(
        &node,
        "SELECT date_part('epoch', generation_time) AS t, cluster, used_gib FROM report.fleet_memory",
    );
    let series = names(&chart["series"]);
    let mut checked = 0;
    for (i, name) in series.iter().enumerate() {
        let line = data[i + 1].as_array().expect("line");
        for (t, y) in x.iter().zip(line) {
            let row = stored
                .iter()
                .find(|r| r[1] == name.as_str() && (r[0].as_f64().unwrap_or(0.0) - t).abs() < 1e-3);
            // A gap (null) only where the report has no row for that cluster.
            match (row, y.as_f64()) {
                (None, None) => {}
                (Some(row), Some(got)) => {
                    let want = row[2].as_f64().expect("used_gib");
                    assert!(
                        (want - got).abs() <= 1e-9 * want.abs().max(1.0),
                        "{name} at {t}: drew {got}, stored {want}"
                    );
                    checked += 1;
                }
                (row, _) => panic!("{name} at {t}: drew {y}, stored {row:?}"),
            }
        }
    }
    assert!(checked >= 3 * clusters.len(), "{checked} values checked");

    // Hovering shows the values at that time with the unit (uPlot's legend); a click on a
    // legend entry hides its line.
    let fleet = ".chart[data-report=\"fleet_memory\"]";
    browser.hover(&format!("{fleet} .u-over"));
    let legend = browser.wait_for(
        "the values under the cursor",
        &format!(
            "(() => {{ const v = [...document.querySelectorAll('{fleet} .u-series .u-value')] \
             .map((e) => e.textContent); return v.slice(1).every((t) => t.endsWith(' GiB')) && v; }})()"
        ),
    );
    assert_eq!(
        legend.as_array().map(Vec::len),
        Some(clusters.len() + 1),
        "{legend}"
    );
    browser.click(&format!(
        "{fleet} .u-legend .u-series:nth-child(2) .u-label"
    ));
    assert_eq!(
        browser.eval(&format!(
            "(() => {{ const u = plots.get(document.querySelector('{fleet}')); \
             return u.series.map((s) => s.show); }})()"
        )),
        Some(json!(std::iter::once(true)
            .chain(clusters.iter().enumerate().map(|(i, _)| i != 0))
            .collect::<Vec<_>>()))
    );

    // The broken report: its error beside an empty chart; the good one is unaffected.
    let shown = browser.wait_for(
        "the broken report's error",
        "(() => { const e = document.querySelector('.report[data-report=\"broken\"] .report-error'); \
         return e && !e.hidden && e.textContent; })()",
    );
    assert_eq!(shown, json!(format!("last run failed: {last_error}")));
    assert_eq!(
        browser.eval(
            "(() => { const r = document.querySelector('.report[data-report=\"broken\"]'); \
             return [r.querySelector('.chart').dataset.points, r.querySelector('.chart-note').textContent]; })()"
        ),
        Some(json!(["0", "no rows kept yet"]))
    );

    // Another range redraws from the node; "all" (a day of 1 s runs) is averaged by time
    // bucket in SQL, and still draws every cluster.
    browser.click("#ranges button[data-range=\"all\"]");
    let chart = browser.wait_for(
        "fleet_memory over its whole retention",
        &format!(
            "(() => {{ const c = {}; return c && c.status.includes('range all') ? c : null; }})()",
            chart_of("fleet_memory")
        ),
    );
    assert!(chart["points"].as_u64().is_some_and(|p| p >= 1), "{chart}");
    assert_eq!(chart["note"], "", "{chart}");
    let mut drawn = names(&chart["series"]);
    drawn.sort();
    assert_eq!(drawn, clusters, "{chart}");
    drop(browser);

    // A screenshot for people to look at.
    let shot = std::env::temp_dir().join("console-graphs.png");
    dump_dom(&node.url("/#graphs"), Some(&shot));
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000));

    // The query view: no Chart button without a time column; with one (and a string
    // column), a click draws one line per cluster from the answer's rows.
    let no_time = "SELECT cluster, count(*) AS machines FROM sys GROUP BY cluster";
    let mut browser = Browser::open(&node.url(&format!("/#sql={}", encode(no_time))));
    browser.wait_for("the query to run", "document.body.dataset.state === 'done'");
    assert_eq!(
        browser.eval("document.getElementById('chart').hidden"),
        Some(json!(true))
    );
    let sql = "SELECT generation_time, cluster, used_gib FROM report.fleet_memory ORDER BY generation_time";
    browser.eval(&format!(
        "document.body.dataset.state = 'running'; document.getElementById('sql').value = {}",
        serde_json::to_string(sql).expect("json")
    ));
    browser.click("#run");
    browser.wait_for("the query to run", "document.body.dataset.state === 'done'");
    browser.click("#chart");
    let drawn = browser.wait_for(
        "the answer's chart",
        "(() => { const c = document.querySelector('#result-chart .chart'); \
         return c && c.dataset.points && { points: Number(c.dataset.points), \
         series: JSON.parse(c.dataset.series), rows: document.querySelectorAll('#results tbody tr').length }; })()",
    );
    let rows_shown = drawn["rows"].as_u64().expect("rows");
    let points = drawn["points"].as_u64().expect("points");
    assert!(points >= 3, "{drawn}");
    assert!(points * clusters.len() as u64 >= rows_shown, "{drawn}");
    let drawn_names: BTreeSet<String> = names(&drawn["series"]).into_iter().collect();
    assert_eq!(drawn_names, clusters.iter().cloned().collect(), "{drawn}");
}

/// With tokens, the page asks for one and lists nothing; with a token that may read only
/// report.fleet_memory, it shows that report alone and draws it (GET /reports and /sql both
/// with the tab's token).
#[test]
fn graphs_page_uses_the_tabs_token_and_shows_only_readable_reports() {
    let tables = ["report.fleet_memory".to_string()];
    let (secret, entry) =
        query_actors::auth::tokens::generate("grapher", &["*".into()], Some(&tables), false)
            .expect("token");
    let ws = Workspace::new();
    std::fs::write(ws.path("tokens.toml"), entry).expect("tokens file");
    std::fs::write(ws.path("reports.toml"), REPORTS).expect("write reports.toml");
    let node = ws.start(
        "demo",
        "[generation]\ninterval = \"1s\"\noffset = \"100ms\"\n\n[simulate]\nmachines = 20\nclusters = 2\n\n\
         [history]\ndir = \"history\"\nreports = \"reports.toml\"\n\n[auth]\ntokens_file = \"tokens.toml\"\n",
    );

    // No token: the page asks for one; no report is listed.
    let dom = dump_dom(&node.url("/#graphs"), None);
    assert!(dom.contains("data-auth=\"needed\""), "{dom}");
    assert!(dom.contains("this node needs a token"), "{dom}");
    assert!(!dom.contains("data-report="), "{dom}");

    // The token from a link: fleet_memory drawn once it holds rows, broken not listed.
    let mut browser = Browser::open(&node.url(&format!("/#token={secret}&graphs")));
    let chart = browser.wait_for(
        "fleet_memory drawn with the token",
        &format!(
            "(() => {{ const c = {}; return c && c.points >= 1 ? c : null; }})()",
            chart_of("fleet_memory")
        ),
    );
    assert!(
        chart["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("1 report, range 1h")),
        "{chart}"
    );
    assert_eq!(
        browser.eval("[...document.querySelectorAll('.report')].map((r) => r.dataset.report)"),
        Some(json!(["fleet_memory"]))
    );
    assert_eq!(
        browser.eval(&format!(
            "document.documentElement.outerHTML.includes('{secret}') || location.href.includes('{secret}')"
        )),
        Some(json!(false)),
        "the token is not shown in the page"
    );
}
