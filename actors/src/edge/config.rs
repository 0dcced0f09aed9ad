//! `[edge]`: the publish socket, file drop, limits and the tables collected before any
//! parent requests them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::file_drop::FileDropConfig;
use super::store::EdgeLimits;
use crate::error::{ConfigError, ConfigResult};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// The Unix socket publishers connect to.
    pub socket: PathBuf,
    /// Its permission bits (TOML accepts `0o660`).
    pub socket_mode: u32,
    /// Users (uids) who may publish on the Unix socket; empty: anyone who can open it.
    pub allowed_uids: Vec<u32>,
    /// Also accept publishers on this TCP address; loopback only.
    pub tcp: Option<SocketAddr>,
    /// Tables collected without a request from upstream; `["*"]` for every schema.
    pub prewarm: Vec<String>,
    /// A directory whose `T.csv`, `T.tsv`, `T.jsonl` files are published as table T.
    pub file_drop: Option<PathBuf>,
    /// How often the drop directory is looked at; a file is read once it is unchanged
    /// between two looks.
    #[serde(with = "humantime_serde")]
    pub file_drop_poll: Duration,
    /// A dropped file larger than this is refused unread.
    pub file_drop_max_bytes: u64,
    /// Reading and parsing one dropped file may take this long; past it the last good copy
    /// stays.
    #[serde(with = "humantime_serde")]
    pub file_drop_read_timeout: Duration,
    /// Owners (uids) of dropped files besides the agent's own user and root.
    pub file_drop_owners: Vec<u32>,
    pub max_line_bytes: usize,
    pub max_rows_per_publish: usize,
    /// Connections at once. When full, a newcomer closes a connection that never said
    /// hello, else the one idle longest (if idle for `hello_timeout`), else is refused.
    pub max_publishers: usize,
    /// Tables one hello may declare.
    pub max_tables_per_publisher: usize,
    /// Distinct publishers (name, and uid on the Unix socket) holding rows in the agent.
    pub max_publisher_names: usize,
    /// Bytes of rows one publisher may keep, all its tables together.
    pub max_bytes_per_publisher: usize,
    /// Bytes of rows all publishers together may keep.
    pub max_stored_bytes: usize,
    /// A connection must say hello this soon after connecting.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// A connection that sends no complete line for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A publisher's rows stay this long after its last publish, then leave.
    #[serde(with = "humantime_serde")]
    pub publisher_stale_after: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            socket: "/run/query/publish.sock".into(),
            socket_mode: 0o660,
            allowed_uids: Vec::new(),
            tcp: None,
            prewarm: Vec::new(),
            file_drop: None,
            file_drop_poll: Duration::from_secs(1),
            file_drop_max_bytes: 16 << 20,
            file_drop_read_timeout: Duration::from_secs(5),
            file_drop_owners: Vec::new(),
            max_line_bytes: 16 << 20,
            max_rows_per_publish: 1_000_000,
            max_publishers: 256,
            max_tables_per_publisher: 64,
            max_publisher_names: 256,
            max_bytes_per_publisher: 64 << 20,
            max_stored_bytes: 256 << 20,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
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
        if self.tcp.is_some() && !self.allowed_uids.is_empty() {
            return bad(
                "allowed_uids",
                "TCP cannot tell who connects: remove tcp, or allowed_uids",
            );
        }
        if self.socket_mode > 0o777 {
            return bad("socket_mode", "permission bits, e.g. 0o660");
        }
        if self.max_line_bytes < 1024
            || self.max_rows_per_publish == 0
            || self.max_publishers == 0
            || self.max_tables_per_publisher == 0
            || self.max_publisher_names == 0
        {
            return bad(
                "limits",
                "max_line_bytes >= 1024; max_rows_per_publish, max_publishers, \
                 max_tables_per_publisher and max_publisher_names > 0",
            );
        }
        if self.max_bytes_per_publisher == 0 || self.max_bytes_per_publisher > self.max_stored_bytes
        {
            return bad(
                "max_bytes_per_publisher",
                "more than 0 and at most max_stored_bytes",
            );
        }
        for (key, d) in [
            ("hello_timeout", self.hello_timeout),
            ("idle_timeout", self.idle_timeout),
            ("file_drop_poll", self.file_drop_poll),
            ("file_drop_read_timeout", self.file_drop_read_timeout),
        ] {
            if d.is_zero() {
                return bad(key, "must be more than 0");
            }
        }
        if self.file_drop_max_bytes == 0 {
            return bad("file_drop_max_bytes", "must be more than 0");
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
            max_tables_per_publisher: self.max_tables_per_publisher,
            max_publisher_names: self.max_publisher_names,
            max_bytes_per_publisher: self.max_bytes_per_publisher,
            max_stored_bytes: self.max_stored_bytes,
            hello_timeout: self.hello_timeout,
            idle_timeout: self.idle_timeout,
            allowed_uids: self.allowed_uids.clone(),
            publisher_stale_after: self.publisher_stale_after,
        }
    }

    /// The file drop's settings, when a drop directory is configured.
    pub fn file_drop_config(&self) -> Option<FileDropConfig> {
        Some(FileDropConfig {
            dir: self.file_drop.clone()?,
            poll: self.file_drop_poll,
            max_bytes: self.file_drop_max_bytes,
            read_timeout: self.file_drop_read_timeout,
            owners: self.file_drop_owners.clone(),
        })
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
