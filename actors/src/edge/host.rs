//! The host publisher: this machine's `sys`, `processes`, `filesystem`,
//! `network_interfaces` and `machinerole` tables, read from /proc, /sys and statvfs(3).
//!
//! Linux only (as the agents of the system we reimplement); a missing file yields an empty
//! or partial table and a warning, never a failure of the node.

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Collected, LocalPublisher, Published};
use crate::generation::SourceStamp;
use crate::table::{unix_millis, Cell, SchemaRegistry, TableBuilder, TableDef};

/// Filesystem types that describe no storage.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "devtmpfs",
    "mqueue",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "autofs",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "binfmt_misc",
    "nsfs",
    "cgroup",
    "cgroup2",
    "rpc_pipefs",
    "efivarfs",
    "ramfs",
    "squashfs",
    "selinuxfs",
];

#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub machine_ip: String,
    pub cluster: String,
    pub georegion: i64,
    pub roles: Vec<String>,
}

pub struct HostPublisher {
    id: HostIdentity,
    schemas: SchemaRegistry,
    /// (busy, total) jiffies at the previous sample, for cpu_busy_pct.
    last_cpu: Option<(u64, u64)>,
}

impl HostPublisher {
    pub fn new(id: HostIdentity, schemas: SchemaRegistry) -> Self {
        HostPublisher {
            id,
            schemas,
            last_cpu: None,
        }
    }

    fn table(&self, name: &str, rows: Vec<Vec<Cell>>, now: SystemTime) -> Option<Published> {
        let def: &Arc<TableDef> = self.schemas.get(name)?;
        let mut b = TableBuilder::new(def.arrow_schema(true), def.full_columns(true));
        for mut row in rows {
            row.insert(0, Cell::Str(self.id.machine_ip.clone()));
            if let Err(e) = b.push_row(row) {
                // Our own reader disagrees with the schema file: say so, keep the other rows.
                tracing::warn!(table = name, error = %e, "host publisher row does not fit the schema");
            }
        }
        Some(Published::new(
            name,
            format!("{}/host", self.id.machine_ip),
            b.finish(),
            vec![SourceStamp {
                source: self.id.machine_ip.as_str().into(),
                published_at: now,
            }],
        ))
    }

    fn sys_row(&mut self, now: SystemTime) -> Vec<Cell> {
        let mem = meminfo();
        let m = |k: &str| Cell::Int(*mem.get(k).unwrap_or(&0));
        let loadavg = read("/proc/loadavg");
        let mut la = loadavg.split_whitespace();
        let mut lf = || Cell::Float(la.next().and_then(|v| v.parse().ok()).unwrap_or(0.0));
        let (l1, l5, l15) = (lf(), lf(), lf());
        let procs = loadavg
            .split_whitespace()
            .nth(3)
            .and_then(|v| v.split('/').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let uptime: f64 = read("/proc/uptime")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let stat = read("/proc/stat");
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count() as i64;
        let busy_pct = match (cpu_jiffies(&stat), self.last_cpu) {
            (Some((b, t)), Some((pb, pt))) if t > pt => {
                100.0 * (b.saturating_sub(pb)) as f64 / (t - pt) as f64
            }
            _ => 0.0,
        };
        self.last_cpu = cpu_jiffies(&stat);
        let boot = now
            .checked_sub(Duration::from_secs_f64(uptime))
            .unwrap_or(UNIX_EPOCH);
        vec![
            Cell::Str(read("/proc/sys/kernel/hostname").trim().to_string()),
            Cell::Str(self.id.cluster.clone()),
            Cell::Int(self.id.georegion),
            Cell::Str(os_name()),
            Cell::Str(read("/proc/sys/kernel/osrelease").trim().to_string()),
            Cell::Int(cpus),
            m("MemTotal"),
            m("MemFree"),
            m("MemAvailable"),
            m("SwapTotal"),
            m("SwapFree"),
            l1,
            l5,
            l15,
            Cell::Float(busy_pct),
            Cell::Int(procs),
            Cell::Int(uptime as i64),
            Cell::Ts(unix_millis(boot)),
        ]
    }
}

impl LocalPublisher for HostPublisher {
    fn name(&self) -> &str {
        "host"
    }

    fn collect(&mut self, now: SystemTime) -> Collected {
        let sys = vec![self.sys_row(now)];
        let roles = self
            .id
            .roles
            .iter()
            .map(|r| vec![Cell::Str(r.clone())])
            .collect();
        [
            ("sys", sys),
            ("processes", processes(now)),
            ("filesystem", filesystems()),
            ("network_interfaces", interfaces()),
            ("machinerole", roles),
        ]
        .into_iter()
        .filter_map(|(name, rows)| self.table(name, rows, now))
        .collect::<Vec<_>>()
        .into()
    }
}

fn read(path: &str) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn meminfo() -> HashMap<String, i64> {
    read("/proc/meminfo")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn os_name() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

fn processes(now: SystemTime) -> Vec<Vec<Cell>> {
    let page_kib = (rustix::param::page_size() / 1024) as i64;
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    let uptime: f64 = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let boot = now
        .checked_sub(Duration::from_secs_f64(uptime))
        .unwrap_or(UNIX_EPOCH);
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        // A process may exit between listing and reading: skip it.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let uid = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(-1);
        let start = boot + Duration::from_secs_f64(num(19) as f64 / ticks);
        rows.push(vec![
            Cell::Int(pid),
            Cell::Int(num(1)),
            Cell::Str(comm),
            Cell::Str(f.first().unwrap_or(&"?").to_string()),
            Cell::Int(uid),
            Cell::Int(num(21) * page_kib),
            Cell::Int(num(20) / 1024),
            Cell::Int(num(17)),
            Cell::Float((num(11) + num(12)) as f64 / ticks),
            Cell::Ts(unix_millis(start)),
        ]);
    }
    rows
}

fn filesystems() -> Vec<Vec<Cell>> {
    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::new();
    for line in read("/proc/self/mounts").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [device, mountp, fstype, options, ..] = f[..] else {
            continue;
        };
        if PSEUDO_FS.contains(&fstype) || !seen.insert(mountp.to_string()) {
            continue;
        }
        // /proc/mounts escapes spaces and the like as octal.
        let mountp = mountp.replace("\\040", " ").replace("\\011", "\t");
        let Ok(s) = rustix::fs::statvfs(mountp.as_str()) else {
            continue;
        };
        if s.f_blocks == 0 {
            continue;
        }
        rows.push(vec![
            Cell::Str(mountp),
            Cell::Str(device.to_string()),
            Cell::Str(fstype.to_string()),
            Cell::Int(s.f_frsize as i64),
            Cell::Int(s.f_blocks as i64),
            Cell::Int(s.f_bfree as i64),
            Cell::Int(s.f_bavail as i64),
            Cell::Int(s.f_files as i64),
            Cell::Int(s.f_ffree as i64),
            Cell::Bool(options.split(',').any(|o| o == "ro")),
        ]);
    }
    rows
}

fn interfaces() -> Vec<Vec<Cell>> {
    read("/proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim().to_string();
            let c: Vec<i64> = counters
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            let g = |i: usize| Cell::Int(c.get(i).copied().unwrap_or(0));
            let operstate = read(&format!("/sys/class/net/{name}/operstate"));
            // Loopback reports "unknown" while working.
            let up = matches!(operstate.trim(), "up" | "unknown");
            let mtu = read(&format!("/sys/class/net/{name}/mtu"))
                .trim()
                .parse()
                .unwrap_or(0);
            Some(vec![
                Cell::Str(name),
                Cell::Bool(up),
                Cell::Int(mtu),
                g(0),
                g(8),
                g(1),
                g(9),
                g(2),
                g(10),
                g(3),
                g(11),
            ])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let schemas = crate::table::load_schema_dir(&dir).expect("schemas");
        let id = HostIdentity {
            machine_ip: "127.0.0.1".into(),
            cluster: "local".into(),
            georegion: 1,
            roles: vec!["tla".into(), "sql".into()],
        };
        let mut host = HostPublisher::new(id, schemas);
        let out = host.collect(SystemTime::now()).tables;
        let rows = |t: &str| {
            out.iter()
                .find(|p| p.table == t)
                .map(|p| p.part.batch.num_rows())
                .unwrap_or(0)
        };
        assert_eq!(rows("sys"), 1);
        assert!(rows("processes") >= 1, "this test process at least");
        assert!(rows("network_interfaces") >= 1, "loopback at least");
        assert_eq!(rows("machinerole"), 2);
    }
}
