//! Names of the nodes a parent dials, kept resolved. A child (a cluster's proxies, a SQL
//! node's TLAs) may be given as addresses or as DNS names (`NAME:PORT`); names are looked
//! up at `[dns] nameserver` (or the system's resolver) every `resolve_every`, so adding an
//! address to a name adds a machine without restarting anything, and removing one takes it
//! away. A failed look-up keeps the name's last good addresses.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::error::{ConfigError, ConfigResult};
use crate::node::supervisor::Supervisor;
use crate::sql::SqlPool;

/// `[dns]`: where and how often names are looked up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// The DNS server to ask (`IP:PORT`); none: the system's resolver.
    pub nameserver: Option<SocketAddr>,
    /// Names are looked up again this often.
    #[serde(with = "humantime_serde")]
    pub resolve_every: Duration,
    /// One look-up gives up after this long (the last good addresses stay).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameserver: None,
            resolve_every: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
        }
    }
}

impl DnsConfig {
    pub fn validate(&self) -> ConfigResult<()> {
        if self.resolve_every < Duration::from_millis(100) || self.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                what: "[dns]".into(),
                message: "resolve_every must be at least 100ms and timeout positive".into(),
            });
        }
        Ok(())
    }
}

/// Checks that `entry` is something a link can dial: `mem:NAME`, or `HOST:PORT`.
pub fn check_entry(what: &str, entry: &str) -> ConfigResult<()> {
    let ok = entry.starts_with("mem:")
        || entry
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            what: what.into(),
            message: format!("'{entry}' is not HOST:PORT"),
        })
    }
}

/// An entry that needs no look-up: an in-process pipe or `IP:PORT`.
fn literal(entry: &str) -> bool {
    entry.starts_with("mem:") || entry.parse::<SocketAddr>().is_ok()
}

/// Keeps `entries` (addresses or `NAME:PORT`) resolved: the receiver holds every address
/// they name now, in entry order, without repeats. Literal addresses are there at once;
/// names once their first look-up answers.
#[cfg(test)]
pub fn watch_addresses(
    entries: Vec<String>,
    dns: &DnsConfig,
    pool: &SqlPool,
) -> watch::Receiver<Vec<String>> {
    let (rx, resolver) = resolver(entries, dns);
    if let Some(mut start) = resolver {
        pool.spawn(start());
    }
    rx
}

/// Keeps `entries` resolved (as `watch_addresses`, which tests use alone) with the look-up
/// loop under the node's supervisor, as `name`; the addresses found survive a restart of
/// the loop.
pub fn watch_addresses_supervised(
    entries: Vec<String>,
    dns: &DnsConfig,
    pool: &SqlPool,
    supervisor: &Supervisor,
    name: &str,
) -> watch::Receiver<Vec<String>> {
    let (rx, resolver) = resolver(entries, dns);
    if let Some(start) = resolver {
        supervisor.spawn_task(name, pool, start);
    }
    rx
}

type Known = Arc<Mutex<Vec<Vec<String>>>>;

/// The receiver, and what starts the look-up loop (None if every entry is literal).
#[allow(clippy::type_complexity)]
fn resolver(
    entries: Vec<String>,
    dns: &DnsConfig,
) -> (
    watch::Receiver<Vec<String>>,
    Option<impl FnMut() -> futures::future::BoxFuture<'static, ()> + Send + 'static>,
) {
    let known: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            if literal(e) {
                vec![e.clone()]
            } else {
                Vec::new()
            }
        })
        .collect();
    let (tx, rx) = watch::channel(flatten(&known));
    if entries.iter().all(|e| literal(e)) {
        return (rx, None);
    }
    let (dns, tx, known) = (dns.clone(), Arc::new(tx), Known::new(Mutex::new(known)));
    let entries = Arc::new(entries);
    let start = move || -> futures::future::BoxFuture<'static, ()> {
        Box::pin(resolve_loop(
            entries.clone(),
            dns.clone(),
            known.clone(),
            tx.clone(),
        ))
    };
    (rx, Some(start))
}

async fn resolve_loop(
    entries: Arc<Vec<String>>,
    dns: DnsConfig,
    known: Known,
    tx: Arc<watch::Sender<Vec<String>>>,
) {
    loop {
        let mut now = known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (entry, addrs) in entries.iter().zip(now.iter_mut()) {
            if literal(entry) {
                continue;
            }
            match query_client::dns::lookup_host(entry, 0, dns.nameserver, dns.timeout).await {
                Ok(found) => {
                    let found: Vec<String> = found.iter().map(|a| a.to_string()).collect();
                    if found != *addrs {
                        tracing::info!(name = %entry, addresses = ?found, "name resolved");
                        *addrs = found;
                    }
                }
                Err(e) => {
                    tracing::warn!(name = %entry, error = %e, kept = ?addrs, "name look-up failed; keeping its last addresses")
                }
            }
        }
        let flat = flatten(&now);
        *known.lock().unwrap_or_else(|p| p.into_inner()) = now;
        tx.send_if_modified(|v| {
            let changed = *v != flat;
            *v = flat;
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(dns.resolve_every) => {}
            // Nobody follows these names any more (the node is going away).
            _ = tx.closed() => std::future::pending::<()>().await,
        }
    }
}

fn flatten(known: &[Vec<String>]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in known.iter().flatten() {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked() {
        assert!(check_entry("t", "10.0.0.1:7400").is_ok());
        assert!(check_entry("t", "proxies.c1.example:7400").is_ok());
        assert!(check_entry("t", "mem:sim/1").is_ok());
        assert!(check_entry("t", "proxies.c1.example").is_err());
        assert!(check_entry("t", ":7400").is_err());
    }

    #[test]
    fn literal_addresses_are_there_at_once_and_names_resolve() {
        let pool = SqlPool::new(1).expect("pool");
        let rx = watch_addresses(
            vec!["127.0.0.1:1".into(), "mem:x".into(), "127.0.0.1:1".into()],
            &DnsConfig::default(),
            &pool,
        );
        assert_eq!(*rx.borrow(), vec!["127.0.0.1:1", "mem:x"]);

        // `localhost` resolves through the system's resolver without any network.
        let mut rx = watch_addresses(vec!["localhost:9".into()], &DnsConfig::default(), &pool);
        let rt = runtime();
        rt.block_on(async {
            resolved(&mut rx).await;
        });
        assert!(
            rx.borrow().iter().all(|a| a.ends_with(":9")),
            "{:?}",
            rx.borrow()
        );
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Waits (10 s at most) until the watcher has found an address.
    async fn resolved(rx: &mut tokio::sync::watch::Receiver<Vec<String>>) {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| !v.is_empty()))
            .await
            .expect("resolved in time")
            .map(|_| ())
            .expect("sender alive");
    }

    #[test]
    fn a_supervised_watcher_restarts_after_a_panic_keeping_its_addresses() {
        let pool = SqlPool::new(1).expect("pool");
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let sup = Supervisor::with_backoff(
            "test",
            metrics,
            Duration::from_millis(10),
            Duration::from_millis(20),
        );
        let dns = DnsConfig {
            resolve_every: Duration::from_millis(50),
            ..DnsConfig::default()
        };
        let mut rx =
            watch_addresses_supervised(vec!["localhost:9".into()], &dns, &pool, &sup, "dns:x");
        let rt = runtime();
        rt.block_on(async {
            resolved(&mut rx).await;
            assert!(sup.inject_panic("dns:x"));
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while sup.status_of("dns:x").map(|s| s.restarts) != Some(1) {
                assert!(std::time::Instant::now() < deadline, "restarted in time");
                // What was found stays while the watcher restarts.
                assert!(!rx.borrow().is_empty());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let st = sup.status_of("dns:x").expect("registered");
        assert_eq!(
            st.last_error.as_deref(),
            Some("panicked: fault injected into dns:x")
        );
        assert!(!rx.borrow().is_empty());
    }
}
