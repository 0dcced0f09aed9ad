//! A blocking publisher client: say hello, learn which tables are wanted, publish rows.
//!
//! ```no_run
//! use query_client::{protocol::Row, Publisher};
//! let mut p = Publisher::connect_unix("/run/query/publish.sock", "my-daemon", &["load_info"])?;
//! if p.is_wanted("load_info") {
//!     let row: Row = serde_json::from_str(r#"{"georegion": 1, "hits": 10, "bytes": 100, "errors": 0}"#)?;
//!     p.publish("load_info", vec![row])?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{encode_line, FromAgent, FromPublisher, Hello, Publish, PublishError, Row};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent closed the connection")]
    Closed,
    #[error("unexpected message from the agent: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(PublishError),
}

pub struct Publisher {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
    wanted: Vec<String>,
}

impl Publisher {
    /// Connects to the agent's Unix socket and declares the tables this publisher can publish.
    pub fn connect_unix(
        path: impl AsRef<Path>,
        name: &str,
        tables: &[&str],
    ) -> Result<Self, ClientError> {
        #[cfg(unix)]
        {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            Self::handshake(Box::new(s.try_clone()?), Box::new(s), name, tables)
        }
        #[cfg(not(unix))]
        {
            let _ = (path, name, tables);
            Err(ClientError::Protocol(
                "Unix sockets need a Unix system; use connect_tcp".into(),
            ))
        }
    }

    /// Connects to the agent's TCP listener (127.0.0.1 only, when enabled).
    pub fn connect_tcp(addr: &str, name: &str, tables: &[&str]) -> Result<Self, ClientError> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Self::handshake(Box::new(s.try_clone()?), Box::new(s), name, tables)
    }

    fn handshake(
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
        name: &str,
        tables: &[&str],
    ) -> Result<Self, ClientError> {
        let mut p = Publisher {
            reader: BufReader::new(r),
            writer: w,
            wanted: Vec::new(),
        };
        let hello = Hello {
            publisher: name.to_string(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
        };
        p.writer
            .write_all(&encode_line(&FromPublisher::Hello(hello)))?;
        p.writer.flush()?;
        // The agent answers a hello with the wanted set (or an error).
        match p.read()? {
            FromAgent::Want(w) => p.wanted = w,
            FromAgent::Error(e) => return Err(ClientError::Refused(e)),
            other => return Err(ClientError::Protocol(format!("{other:?}"))),
        }
        Ok(p)
    }

    /// Tables the agent currently collects from this publisher.
    pub fn wanted(&self) -> &[String] {
        &self.wanted
    }

    pub fn is_wanted(&self, table: &str) -> bool {
        self.wanted.iter().any(|t| t == table)
    }

    /// Publishes a full copy of this publisher's rows of `table`; returns the rows accepted.
    pub fn publish(&mut self, table: &str, rows: Vec<Row>) -> Result<usize, ClientError> {
        let msg = FromPublisher::Publish(Publish {
            table: table.to_string(),
            rows,
        });
        self.writer.write_all(&encode_line(&msg))?;
        self.writer.flush()?;
        loop {
            match self.read()? {
                FromAgent::Want(w) => self.wanted = w,
                FromAgent::Ok(ok) => return Ok(ok.rows),
                FromAgent::Error(e) => return Err(ClientError::Refused(e)),
            }
        }
    }

    fn read(&mut self) -> Result<FromAgent, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Closed);
        }
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line}")))
    }
}
