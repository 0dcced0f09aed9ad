//! `[edge]`: the publish socket, file drop, limits and the tables collected before any
//! parent requests them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::store::EdgeLimits;
use crate::error::{ConfigError, ConfigResult};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// The Unix socket publishers connect to.
    pub socket: PathBuf,
    /// Its permission bits (TOML accepts `0o660`).
    pub socket_mode: u32,
    /// Also accept publishers on this TCP address; loopback only.
    pub tcp: Option<SocketAddr>,
    /// Tables collected without a request from upstream; `["*"]` for every schema.
    pub prewarm: Vec<String>,
    /// A directory whose `T.csv`, `T.tsv`, `T.jsonl` files are published as table T.
    pub file_drop: Option<PathBuf>,
    pub max_line_bytes: usize,
    pub max_rows_per_publish: usize,
    pub max_publishers: usize,
    /// A publisher's rows stay this long after its last publish, then leave.
    #[serde(with = "humantime_serde")]
    pub publisher_stale_after: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            socket: "/run/query/publish.sock".into(),
            socket_mode: 0o660,
            tcp: None,
            prewarm: Vec::new(),
            file_drop: None,
            max_line_bytes: 16 << 20,
            max_rows_per_publish: 1_000_000,
            max_publishers: 256,
            publisher_stale_after: Duration::from_secs(180),
        }
    }
}

impl EdgeConfig {
    pub fn validate(&self) -> ConfigResult<()> {
        let bad = |what: &str, m: &str| {
            Err(ConfigError::Invalid {
                what: format!("[edge] {what}"),
                message: m.into(),
            })
        };
        if self.tcp.is_some_and(|a| !a.ip().is_loopback()) {
            return bad(
                "tcp",
                "publishers are local: use a loopback address (127.0.0.0/8 or [::1])",
            );
        }
        if self.socket_mode > 0o777 {
            return bad("socket_mode", "permission bits, e.g. 0o660");
        }
        if self.max_line_bytes < 1024 || self.max_rows_per_publish == 0 || self.max_publishers == 0
        {
            return bad(
                "limits",
                "max_line_bytes >= 1024, max_rows_per_publish and max_publishers > 0",
            );
        }
        if self.socket.as_os_str().len() > 100 {
            return bad("socket", "Unix socket paths must be shorter than 100 bytes");
        }
        Ok(())
    }

    pub fn limits(&self) -> EdgeLimits {
        EdgeLimits {
            max_line_bytes: self.max_line_bytes,
            max_rows_per_publish: self.max_rows_per_publish,
            max_publishers: self.max_publishers,
            publisher_stale_after: self.publisher_stale_after,
        }
    }

    pub(crate) fn resolve(&mut self, base: &Path) {
        if self.socket.is_relative() {
            self.socket = base.join(&self.socket);
        }
        if let Some(d) = &mut self.file_drop {
            if d.is_relative() {
                *d = base.join(&*d);
            }
        }
    }
}
