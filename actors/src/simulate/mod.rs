//! A simulated fleet: N machines in C clusters publishing the shipped tables with plausible,
//! changing values. [`children`] serves simulated machines or clusters over the real link protocol;
//! [`hierarchy`] assembles the one-process demo (simulated edges → proxies → TLA/SQL).
//!
//! Deterministic for a seed. Each generation a share (`churn`) of the machines changes its
//! values; the rest republish what they had, as an idle machine would.

pub mod children;
pub mod hierarchy;
pub mod standalone;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::edge::{Collected, LocalPublisher, Published};
use crate::generation::{Generation, GenerationBuilder, Part, SourceStamp};
use crate::table::{unix_millis, Cell, SchemaRegistry, TableBuilder, TableDef};
use children::Serve;

pub use crate::node::simulate_config::SimulateConfig;

/// The tables a simulated machine publishes.
pub const TABLES: [&str; 6] = [
    "sys",
    "processes",
    "filesystem",
    "network_interfaces",
    "machinerole",
    "load_info",
];

/// The process names simulated machines run (benchmarks write alerts about them).
pub const PROCS: &[&str] = &[
    "systemd",
    "sshd",
    "cron",
    "rsyslogd",
    "ntpd",
    "queryd",
    "httpd",
    "cache-mgr",
    "dnsd",
    "logshipper",
    "monitor",
    "storaged",
    "mediad",
    "configd",
    "health-check",
    "kworker",
];
const ROLES: &[&str] = &["http", "dns", "storage", "media"];
const MOUNTS: &[(&str, &str)] = &[
    ("/", "ext4"),
    ("/var", "ext4"),
    ("/data", "xfs"),
    ("/boot", "ext4"),
];
const REGIONS: i64 = 42;

struct Proc {
    pid: i64,
    name: &'static str,
    rss: i64,
    cpu: f64,
    start: i64,
}

struct Machine {
    ip: String,
    hostname: String,
    cluster: String,
    georegion: i64,
    roles: Vec<&'static str>,
    memtotal: i64,
    memavailable: i64,
    load1: f64,
    boot_ms: i64,
    procs: Vec<Proc>,
    /// (blocks, bavail) per entry of MOUNTS.
    disks: Vec<(i64, i64)>,
    rx: i64,
    tx: i64,
    /// (georegion, hits/s) the machine serves.
    load: Vec<(i64, i64)>,
    published_at: SystemTime,
}

pub struct FleetSimulator {
    machines: Vec<Machine>,
    churn: f64,
    rng: SmallRng,
    schemas: SchemaRegistry,
}

impl FleetSimulator {
    pub fn new(cfg: &SimulateConfig, schemas: SchemaRegistry) -> Self {
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let now_ms = unix_millis(SystemTime::now());
        let per_cluster = cfg.machines.div_ceil(cfg.clusters);
        let machines = (0..cfg.machines)
            .map(|i| {
                let (c, m) = (i / per_cluster, i % per_cluster);
                // Cluster regions lean towards North America and Europe, as traffic does.
                let georegion = if c % 3 == 0 {
                    1 + (c as i64 % 8)
                } else {
                    1 + (c as i64 * 7) % REGIONS
                };
                let memtotal = [65_536_i64, 131_072, 262_144][rng.random_range(0..3)] * 1024;
                let mut roles = vec![ROLES[rng.random_range(0..ROLES.len())]];
                if rng.random_bool(0.2) {
                    let extra = ROLES[rng.random_range(0..ROLES.len())];
                    if !roles.contains(&extra) {
                        roles.push(extra);
                    }
                }
                let procs = (0..cfg.processes_per_machine)
                    .map(|p| Proc {
                        pid: 100 + p as i64 * 37,
                        name: PROCS[p % PROCS.len()],
                        rss: rng.random_range(2_000..400_000),
                        cpu: rng.random_range(0.0..5000.0),
                        start: now_ms - rng.random_range(60_000..30 * 86_400_000),
                    })
                    .collect();
                let disks = MOUNTS
                    .iter()
                    .map(|_| {
                        let blocks = rng.random_range(1_000_000..500_000_000);
                        (blocks, blocks / 100 * rng.random_range(4..90))
                    })
                    .collect();
                let load = (0..rng.random_range(2..6))
                    .map(|_| {
                        let (region, weight) = end_user_region(&mut rng);
                        (region, rng.random_range(10..5_000) * weight / 10)
                    })
                    .collect();
                let mut m = Machine {
                    // Unique for any fleet: past 250 clusters the first octet moves on.
                    ip: format!("{}.{}.{}.{}", 10 + c / 250, c % 250, m / 250, m % 250 + 1),
                    hostname: format!("c{c:04}-m{m:03}"),
                    cluster: format!("cluster-{c:04}"),
                    georegion,
                    roles,
                    memtotal,
                    memavailable: memtotal / 2,
                    load1: rng.random_range(0.0..4.0),
                    boot_ms: now_ms - rng.random_range(3_600_000..90 * 86_400_000),
                    procs,
                    disks,
                    rx: rng.random_range(0..1 << 40),
                    tx: rng.random_range(0..1 << 40),
                    load,
                    published_at: SystemTime::now(),
                };
                // A few machines start in trouble, so the papers' queries have answers from
                // the first generation: a ballooned process on one in 50, a nearly full
                // /var on one in 40.
                if i % 50 == 7 {
                    if let Some(p) = m.procs.get_mut(8) {
                        p.rss = m.memtotal * 4 / 5;
                    }
                    m.roles = vec!["dns"];
                }
                if i % 40 == 3 {
                    if let Some(d) = m.disks.get_mut(1) {
                        d.1 = d.0 / 100;
                    }
                }
                m
            })
            .collect();
        FleetSimulator {
            machines,
            churn: cfg.churn,
            rng,
            schemas,
        }
    }

    pub fn machines(&self) -> usize {
        self.machines.len()
    }

    /// The simulated tables' keys (for link encoders: changed parts travel as patches).
    pub fn table_keys(&self) -> crate::link::diff::TableKeys {
        crate::link::diff::table_keys(&self.schemas)
    }

    /// Each machine's address and cluster, in fleet order (machines of a cluster together).
    pub fn machine_list(&self) -> Vec<(String, String)> {
        self.machines
            .iter()
            .map(|m| (m.ip.clone(), m.cluster.clone()))
            .collect()
    }

    /// One round cut into one generation per child, by child name: per machine
    /// ([`Serve::Machines`], what an edge seals) or per cluster ([`Serve::Clusters`], what a
    /// cluster proxy seals: a part per machine). Every shipped table is declared, so a
    /// requested table with no rows is still present.
    pub fn seal_round(
        &mut self,
        serve: Serve,
        id: u64,
        round: u64,
        now: SystemTime,
    ) -> BTreeMap<String, Arc<Generation>> {
        self.cut_round(serve, id, round, now).collect()
    }

    /// Moves the fleet one step and returns the round's rows, to be cut into the children's
    /// generations one child at a time ([`RoundCut`] is an iterator, children in fleet
    /// order): a server can hand each child's generation on before the next is cut, so it
    /// need not hold the parts of two whole rounds at once (at 250,000 machines they are
    /// about 2.5 GB a round, mostly the arrays' structures: a part is one machine's rows).
    pub fn cut_round(&mut self, serve: Serve, id: u64, round: u64, now: SystemTime) -> RoundCut {
        let tables = self
            .collect(now)
            .tables
            .into_iter()
            .filter_map(|p| {
                let ips = p
                    .part
                    .batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()?
                    .clone();
                Some(RoundTable {
                    name: p.table,
                    batch: p.part.batch.clone(),
                    ips,
                    next_row: 0,
                })
            })
            .collect();
        let machines = self
            .machines
            .iter()
            .map(|m| RoundMachine {
                ip: m.ip.clone(),
                child: match serve {
                    Serve::Machines => m.ip.clone(),
                    Serve::Clusters => m.cluster.clone(),
                },
                published_at: m.published_at,
            })
            .collect();
        RoundCut {
            declared: self
                .schemas
                .iter()
                .map(|def| (def.name.clone(), def.arrow_schema(true)))
                .collect(),
            tables,
            machines,
            next_machine: 0,
            id,
            round,
            now,
        }
    }

    /// Moves the churned machines' values one step.
    fn step(&mut self, now: SystemTime) {
        let rng = &mut self.rng;
        for m in &mut self.machines {
            // Every machine publishes each interval, a few seconds apart.
            m.published_at = now
                .checked_sub(Duration::from_millis(rng.random_range(0..3000)))
                .unwrap_or(now);
            if !rng.random_bool(self.churn) {
                continue;
            }
            let delta = rng.random_range(-(m.memtotal / 20)..=m.memtotal / 20);
            m.memavailable = (m.memavailable + delta).clamp(m.memtotal / 50, m.memtotal);
            m.load1 = (m.load1 + rng.random_range(-0.5..0.5)).clamp(0.0, 32.0);
            for p in &mut m.procs {
                p.rss = (p.rss + rng.random_range(-20_000..20_000)).max(1_000);
                p.cpu += rng.random_range(0.0..30.0);
            }
            // Now and then a process balloons: the paper's "rss over 75% of memory" query.
            if rng.random_bool(0.01) {
                let i = rng.random_range(0..m.procs.len().max(1));
                if let Some(p) = m.procs.get_mut(i) {
                    p.rss = m.memtotal * rng.random_range(76..95) / 100;
                }
            }
            for d in &mut m.disks {
                let step = d.0 / 200;
                d.1 = (d.1 + rng.random_range(-step..=step / 2)).clamp(0, d.0);
            }
            m.rx += rng.random_range(1_000_000..1_000_000_000);
            m.tx += rng.random_range(1_000_000..4_000_000_000);
            for l in &mut m.load {
                l.1 = (l.1 + rng.random_range(-200..=200)).max(0);
            }
        }
    }

    fn table(
        &self,
        name: &str,
        rows: impl Fn(&Machine, &mut dyn FnMut(Vec<Cell>)),
    ) -> Option<Published> {
        let def: &Arc<TableDef> = self.schemas.get(name)?;
        let mut b = TableBuilder::new(def.arrow_schema(true), def.full_columns(true));
        let mut sources = Vec::with_capacity(self.machines.len());
        for m in &self.machines {
            rows(m, &mut |mut row| {
                row.insert(0, Cell::Str(m.ip.clone()));
                if let Err(e) = b.push_row(row) {
                    tracing::warn!(table = name, error = %e, "simulated row does not fit the schema");
                }
            });
            sources.push(SourceStamp {
                source: m.ip.as_str().into(),
                published_at: m.published_at,
            });
        }
        Some(Published::new(
            name,
            "simulated-fleet".to_string(),
            b.finish(),
            sources,
        ))
    }
}

/// One simulated round's rows, cut into the children's generations as it is iterated
/// ([`FleetSimulator::cut_round`]).
pub struct RoundCut {
    declared: Vec<(String, SchemaRef)>,
    tables: Vec<RoundTable>,
    /// In fleet order, which is every table's row order.
    machines: Vec<RoundMachine>,
    next_machine: usize,
    id: u64,
    round: u64,
    now: SystemTime,
}

/// A table's rows for the whole fleet, machine after machine, and the first row not yet
/// cut into a part.
struct RoundTable {
    name: String,
    batch: RecordBatch,
    /// The `machine_ip` column.
    ips: StringArray,
    next_row: usize,
}

struct RoundMachine {
    ip: String,
    child: String,
    published_at: SystemTime,
}

impl Iterator for RoundCut {
    type Item = (String, Arc<Generation>);

    /// The next child's generation: each of its machines' rows of each table as one part
    /// (slices of the fleet-wide batches, no copy), as its own edge agent would publish
    /// them.
    fn next(&mut self) -> Option<Self::Item> {
        let Some(first) = self.machines.get(self.next_machine) else {
            // Rows out of the fleet's order would be left here, not in any part.
            for t in self
                .tables
                .iter()
                .filter(|t| t.next_row < t.batch.num_rows())
            {
                tracing::warn!(
                    table = t.name,
                    rows = t.batch.num_rows() - t.next_row,
                    "simulated rows out of machine order left out of the round"
                );
            }
            return None;
        };
        let child = first.child.clone();
        let mut b = GenerationBuilder::default();
        for (name, schema) in &self.declared {
            b.declare(name, schema.clone());
        }
        let mut machines = 0;
        while let Some(m) = self
            .machines
            .get(self.next_machine)
            .filter(|m| m.child == child)
        {
            machines += 1;
            for t in &mut self.tables {
                let start = t.next_row;
                while t.next_row < t.batch.num_rows() && t.ips.value(t.next_row) == m.ip {
                    t.next_row += 1;
                }
                if t.next_row == start {
                    continue;
                }
                let part = Part::new(
                    format!("{}/simulated", m.ip),
                    t.batch.slice(start, t.next_row - start),
                    vec![SourceStamp {
                        source: m.ip.as_str().into(),
                        published_at: m.published_at,
                    }],
                );
                if let Err(e) = b.add(&t.name, part) {
                    tracing::warn!(machine = m.ip, error = %e, "simulated rows refused");
                }
            }
            self.next_machine += 1;
        }
        b.counts(machines, 1);
        Some((child, b.seal(self.id, self.round, self.now)))
    }
}

impl LocalPublisher for FleetSimulator {
    fn name(&self) -> &str {
        "simulated-fleet"
    }

    fn collect(&mut self, now: SystemTime) -> Collected {
        self.step(now);
        let now_ms = unix_millis(now);
        let mut out = Vec::new();
        out.extend(self.table("sys", |m, push| {
            let memfree = m.memavailable * 2 / 3;
            push(vec![
                Cell::Str(m.hostname.clone()),
                Cell::Str(m.cluster.clone()),
                Cell::Int(m.georegion),
                "Debian GNU/Linux 12".into(),
                "6.1.0-28-amd64".into(),
                Cell::Int(if m.memtotal > 200_000_000 { 64 } else { 32 }),
                Cell::Int(m.memtotal),
                Cell::Int(memfree),
                Cell::Int(m.memavailable),
                Cell::Int(8_388_608),
                Cell::Int(8_000_000),
                Cell::Float(m.load1),
                Cell::Float(m.load1 * 0.9),
                Cell::Float(m.load1 * 0.8),
                Cell::Float((m.load1 * 12.0).min(100.0)),
                Cell::Int(m.procs.len() as i64 + 180),
                Cell::Int((now_ms - m.boot_ms) / 1000),
                Cell::Ts(m.boot_ms),
            ])
        }));
        out.extend(self.table("processes", |m, push| {
            for p in &m.procs {
                push(vec![
                    Cell::Int(p.pid),
                    Cell::Int(1),
                    Cell::Str(p.name.to_string()),
                    "S".into(),
                    Cell::Int(if p.pid < 200 { 0 } else { 1000 }),
                    Cell::Int(p.rss),
                    Cell::Int(p.rss * 3),
                    Cell::Int(1 + p.pid % 16),
                    Cell::Float(p.cpu),
                    Cell::Ts(p.start),
                ])
            }
        }));
        out.extend(self.table("filesystem", |m, push| {
            for ((mountp, fstype), (blocks, bavail)) in MOUNTS.iter().zip(&m.disks) {
                push(vec![
                    Cell::Str(mountp.to_string()),
                    Cell::Str(format!("/dev/sd{}", &mountp.len().to_string())),
                    Cell::Str(fstype.to_string()),
                    Cell::Int(4096),
                    Cell::Int(*blocks),
                    Cell::Int(bavail + blocks / 100),
                    Cell::Int(*bavail),
                    Cell::Int(blocks / 16),
                    Cell::Int(blocks / 20),
                    Cell::Bool(false),
                ])
            }
        }));
        out.extend(self.table("network_interfaces", |m, push| {
            for (i, name) in ["eth0", "eth1", "lo"].iter().enumerate() {
                let scale = [1, 4, 100][i];
                push(vec![
                    Cell::Str(name.to_string()),
                    Cell::Bool(true),
                    Cell::Int(if i == 2 { 65_536 } else { 1500 }),
                    Cell::Int(m.rx / scale),
                    Cell::Int(m.tx / scale),
                    Cell::Int(m.rx / scale / 900),
                    Cell::Int(m.tx / scale / 1200),
                    Cell::Int(0),
                    Cell::Int(0),
                    Cell::Int(m.rx / scale / 10_000_000),
                    Cell::Int(0),
                ])
            }
        }));
        out.extend(self.table("machinerole", |m, push| {
            for r in &m.roles {
                push(vec![Cell::Str(r.to_string())]);
            }
        }));
        out.extend(self.table("load_info", |m, push| {
            for (region, hits) in &m.load {
                push(vec![
                    Cell::Int(*region),
                    Cell::Int(*hits),
                    Cell::Int(hits * 45_000),
                    Cell::Int(hits / 200),
                ]);
            }
        }));
        out.into()
    }
}

/// An end-user region (region_data.id) and a traffic weight: most traffic comes from
/// North America and Europe, little from Antarctica, as in the paper's table.
fn end_user_region(rng: &mut SmallRng) -> (i64, i64) {
    // (first id, last id, weight) per continent: NA, EU, SA, AS, AF, OC, AN.
    const CONTINENTS: &[(i64, i64, i64)] = &[
        (1, 8, 40),
        (15, 24, 30),
        (9, 14, 8),
        (25, 34, 12),
        (35, 38, 5),
        (39, 41, 4),
        (42, 42, 1),
    ];
    let total: i64 = CONTINENTS.iter().map(|c| c.2).sum();
    let mut pick = rng.random_range(0..total);
    for &(first, last, weight) in CONTINENTS {
        if pick < weight {
            return (rng.random_range(first..=last), weight);
        }
        pick -= weight;
    }
    (1, 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The repository's table schemas, which the simulated fleet publishes.
    pub(crate) fn shipped_schemas() -> SchemaRegistry {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        crate::table::load_schema_dir(&dir).expect("schemas")
    }

    #[test]
    fn fleet_publishes_every_table_for_every_machine_and_changes() {
        let cfg = SimulateConfig {
            machines: 40,
            clusters: 4,
            churn: 1.0,
            ..Default::default()
        };
        cfg.validate().expect("valid");
        let mut sim = FleetSimulator::new(&cfg, shipped_schemas());
        let first = sim.collect(SystemTime::now()).tables;
        assert_eq!(first.len(), 6);
        let sys = first.iter().find(|p| p.table == "sys").expect("sys");
        assert_eq!(sys.part.batch.num_rows(), 40);
        assert_eq!(sys.part.sources.len(), 40);
        let second = sim.collect(SystemTime::now()).tables;
        let sys2 = second.iter().find(|p| p.table == "sys").expect("sys");
        assert_ne!(
            sys.part.batch.column(9),
            sys2.part.batch.column(9),
            "memavailable changed with churn 1.0"
        );
    }

    #[test]
    fn a_round_is_cut_into_each_childs_machines_one_part_each() {
        let cfg = SimulateConfig {
            machines: 12,
            clusters: 3,
            ..Default::default()
        };
        let mut sim = FleetSimulator::new(&cfg, shipped_schemas());
        let now = SystemTime::now();
        let clusters: Vec<_> = sim.cut_round(Serve::Clusters, 1, 1, now).collect();
        let names: Vec<&str> = clusters.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["cluster-0000", "cluster-0001", "cluster-0002"]);
        let mut processes = 0;
        for (_, g) in &clusters {
            assert_eq!((g.machines, g.clusters), (4, 1));
            for name in TABLES {
                let t = &g.tables[name];
                assert_eq!(t.parts.len(), 4, "{name}: a part per machine");
                for p in &t.parts {
                    let ips = p.batch.column(0).as_any().downcast_ref::<StringArray>();
                    let ips = ips.expect("machine_ip");
                    let ip = &p.sources[0].source;
                    assert_eq!(p.key, format!("{ip}/simulated"));
                    assert!(ips.iter().all(|v| v == Some(&**ip)), "{name}: {ip}");
                }
            }
            processes += g.tables["processes"].rows();
        }
        let whole = sim.seal_round(Serve::Machines, 2, 2, now);
        assert_eq!(whole.len(), 12, "a generation per machine");
        assert!(whole.values().all(|g| g.machines == 1));
        let again: usize = whole.values().map(|g| g.tables["processes"].rows()).sum();
        assert_eq!(
            (processes, again),
            (12 * cfg.processes_per_machine, processes)
        );
    }

    #[test]
    fn rejects_bad_config() {
        assert!(SimulateConfig {
            machines: 1,
            clusters: 2,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SimulateConfig {
            churn: 1.5,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
