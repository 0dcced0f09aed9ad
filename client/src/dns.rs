//! Names of Query machines (aggregator sets, TLAs, cluster proxies) → addresses, shared by
//! the `query` command and the nodes: `HOST[:PORT]` parsing and A/AAAA look-ups, either at
//! a given DNS server (hickory-resolver; tests run dnsmasq on loopback) or through the
//! system's resolver.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// `host[:port]` → (host, port), `default_port` when none is given; brackets around an IPv6
/// address are removed. None when the text is not of that form.
pub fn split_host(host: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((ip.to_string(), port));
    }
    match host.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((h, _)) if h.contains(':') => Some((host.to_string(), default_port)),
        Some((h, p)) if !h.is_empty() => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None if host.is_empty() => None,
        None => Some((host.to_string(), default_port)),
    }
}

/// Every address of `name` (an IP stands for itself), sorted so that an unchanged answer
/// compares equal. `server`: the DNS server to ask; None: the system's resolver.
pub async fn lookup(
    name: &str,
    server: Option<SocketAddr>,
    timeout: Duration,
) -> io::Result<Vec<IpAddr>> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let mut ips: Vec<IpAddr> = match server {
        None => tokio::time::timeout(timeout, tokio::net::lookup_host((name, 0)))
            .await
            .map_err(|_| timed_out(name, timeout))??
            .map(|a| a.ip())
            .collect(),
        Some(server) => at_server(name, server, timeout).await?,
    };
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name} has no addresses"),
        ));
    }
    Ok(ips)
}

/// `HOST[:PORT]` → every socket address it names.
pub async fn lookup_host(
    host: &str,
    default_port: u16,
    server: Option<SocketAddr>,
    timeout: Duration,
) -> io::Result<Vec<SocketAddr>> {
    let (name, port) = split_host(host, default_port).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{host}' is not HOST or HOST:PORT"),
        )
    })?;
    Ok(lookup(&name, server, timeout)
        .await?
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

fn timed_out(name: &str, timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("looking up {name} timed out after {timeout:?}"),
    )
}

/// A/AAAA records of `name` from the DNS server at `server`. Records are not cached here
/// beyond their TTL, so a changed name is seen at the next look-up.
async fn at_server(name: &str, server: SocketAddr, timeout: Duration) -> io::Result<Vec<IpAddr>> {
    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
    use hickory_resolver::name_server::TokioConnectionProvider;
    use hickory_resolver::Resolver;

    let config = ResolverConfig::from_parts(
        None,
        vec![],
        NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true),
    );
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = 2;
    // A fully qualified name: no search domains.
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let resolver = Resolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build();
    resolver
        .lookup_ip(fqdn.as_str())
        .await
        .map(|l| l.iter().collect())
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot resolve {name} at {server}: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(
            split_host("sql.example", 8080),
            Some(("sql.example".into(), 8080))
        );
        assert_eq!(
            split_host("sql.example:9000", 8080),
            Some(("sql.example".into(), 9000))
        );
        assert_eq!(split_host("[::1]:9000", 1), Some(("::1".into(), 9000)));
        assert_eq!(split_host("::1", 8080), Some(("::1".into(), 8080)));
        assert_eq!(split_host("sql.example:http", 1), None);
        assert_eq!(split_host(":80", 1), None);
        assert_eq!(split_host("", 1), None);
    }

    #[test]
    fn an_ip_needs_no_dns() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let addrs = rt
            .block_on(lookup_host("127.0.0.9:81", 1, None, Duration::from_secs(1)))
            .expect("an IP");
        assert_eq!(addrs, vec!["127.0.0.9:81".parse().expect("addr")]);
    }
}
