//! The last known state of children that went away: the rows of `query_departed`. A child
//! (a machine at a cluster proxy, a cluster at a TLA, the TLA at a SQL node) that was live
//! and has been silent for `drop_after` is recorded with when it was last heard, when it
//! was dropped, how many machines it stood for, and its last `sys` row; it leaves the table
//! when it speaks again or `departed_keep` after it was dropped. Published by every node
//! like `query_links`, so "which machines stopped reporting in the last hour" is one query
//! at a SQL node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use datafusion::arrow::util::display::array_value_to_string;

use crate::table::{unix_millis, Cell};
use crate::tier::ChildState;

/// One departed child.
#[derive(Debug, Clone)]
struct Departed {
    address: Option<String>,
    last_heard: Option<SystemTime>,
    dropped_at: SystemTime,
    machines: u64,
    /// The machine's address from its last `sys` row, if any.
    machine: Option<String>,
    /// That row as a JSON object (column → value as text).
    last_sys: Option<String>,
}

/// What a node remembers of its departed children.
#[derive(Debug, Default)]
pub struct Departures {
    /// Children live at the last look.
    live: BTreeSet<String>,
    departed: BTreeMap<String, Departed>,
}

impl Departures {
    /// Compares the children's state with the last look: live children that are no longer
    /// live are recorded (and logged), returning ones forgotten, records older than `keep`
    /// dropped. Returns the rows of `query_departed` (after `machine_ip`, `node`).
    pub fn observe(
        &mut self,
        children: &BTreeMap<String, ChildState>,
        live: impl Fn(&ChildState) -> bool,
        kind: &str,
        keep: Duration,
        now: SystemTime,
        instant: Instant,
    ) -> Vec<Vec<Cell>> {
        for (name, s) in children {
            if live(s) {
                if self.departed.remove(name).is_some() {
                    tracing::info!(child = %name, kind, "departed child is back");
                }
                self.live.insert(name.clone());
            } else if self.live.remove(name) {
                let d = departed(s, now, instant);
                tracing::warn!(child = %name, kind, machine = ?d.machine, "child departed: silent for drop_after; its last state is in query_departed");
                self.departed.insert(name.clone(), d);
            }
        }
        self.departed.retain(|name, d| {
            children.contains_key(name)
                && now.duration_since(d.dropped_at).unwrap_or_default() <= keep
        });
        self.departed
            .iter()
            .map(|(name, d)| {
                let text = |v: &Option<String>| v.clone().map_or(Cell::Null, Cell::Str);
                vec![
                    Cell::Str(kind.to_string()),
                    Cell::Str(name.clone()),
                    text(&d.address),
                    text(&d.machine),
                    d.last_heard
                        .map_or(Cell::Null, |t| Cell::Ts(unix_millis(t))),
                    Cell::Ts(unix_millis(d.dropped_at)),
                    Cell::Int(i64::try_from(d.machines).unwrap_or(i64::MAX)),
                    text(&d.last_sys),
                ]
            })
            .collect()
    }
}

fn departed(s: &ChildState, now: SystemTime, instant: Instant) -> Departed {
    let last_heard = s
        .last_frame
        .and_then(|t| now.checked_sub(instant.saturating_duration_since(t)));
    let sys = s
        .latest
        .as_ref()
        .and_then(|g| g.tables.get("sys"))
        .and_then(|t| t.parts.iter().find(|p| p.batch.num_rows() > 0))
        .map(|p| &p.batch);
    let mut machine = None;
    let last_sys = sys.map(|b| {
        let mut row = serde_json::Map::new();
        for (field, column) in b.schema().fields().iter().zip(b.columns()) {
            let value = if column.is_null(0) {
                serde_json::Value::Null
            } else {
                let text = array_value_to_string(column, 0).unwrap_or_default();
                if field.name() == "machine_ip" {
                    machine = Some(text.clone());
                }
                serde_json::Value::String(text)
            };
            row.insert(field.name().clone(), value);
        }
        serde_json::Value::Object(row).to_string()
    });
    Departed {
        address: s.address.clone(),
        last_heard,
        dropped_at: now,
        machines: s.latest.as_ref().map_or(0, |g| g.machines),
        machine,
        last_sys,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tier::children::tests::gen;

    #[test]
    fn a_live_child_that_falls_silent_is_recorded_until_it_returns() {
        let t0 = Instant::now();
        let now = SystemTime::now();
        let mut children = BTreeMap::new();
        children.insert(
            "10.0.0.1:7301".to_string(),
            ChildState {
                address: Some("10.0.0.1:7301".into()),
                latest: Some(Arc::new(gen(3, "10.0.0.1", &["sys"]))),
                last_frame: Some(t0),
                ..Default::default()
            },
        );
        let keep = Duration::from_secs(3600);
        let mut d = Departures::default();
        let alive = |_: &ChildState| true;
        let silent = |_: &ChildState| false;
        assert!(d
            .observe(&children, alive, "machine", keep, now, t0)
            .is_empty());

        let later = now + Duration::from_secs(200);
        let rows = d.observe(
            &children,
            silent,
            "machine",
            keep,
            later,
            t0 + Duration::from_secs(200),
        );
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row[0], Cell::Str("machine".into()));
        assert_eq!(
            row[3],
            Cell::Str("10.0.0.1".into()),
            "machine from its sys row"
        );
        assert_eq!(row[4], Cell::Ts(unix_millis(now)), "last heard");
        assert_eq!(row[5], Cell::Ts(unix_millis(later)), "dropped");
        assert_eq!(row[6], Cell::Int(1));
        match &row[7] {
            Cell::Str(s) => assert!(s.contains("\"v\":\"3\""), "{s}"),
            other => panic!("last sys row: {other:?}"),
        }
        // Still departed a generation later; gone once back, or after `keep`.
        assert_eq!(
            d.observe(&children, silent, "machine", keep, later, t0)
                .len(),
            1
        );
        assert!(d
            .observe(&children, alive, "machine", keep, later, t0)
            .is_empty());
        d.observe(&children, silent, "machine", keep, later, t0);
        let much_later = later + keep + Duration::from_secs(1);
        assert!(d
            .observe(&children, silent, "machine", keep, much_later, t0)
            .is_empty());
    }

    #[test]
    fn a_child_never_live_is_not_departed() {
        let mut children = BTreeMap::new();
        children.insert("c".to_string(), ChildState::default());
        let mut d = Departures::default();
        let rows = d.observe(
            &children,
            |_| false,
            "cluster",
            Duration::from_secs(60),
            SystemTime::now(),
            Instant::now(),
        );
        assert!(rows.is_empty());
    }
}
