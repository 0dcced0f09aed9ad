//! The Postgres wire protocol (`[pg] listen`): psql, drivers and Grafana's PostgreSQL data
//! source query the node as they would a Postgres server.
//!
//! Protocol framing, startup and the extended protocol's statements and portals are
//! `pgwire`'s; this module owns the listener (connection limit, idle timeout), the
//! handlers ([`handler`]) and what a statement does ([`execute`]): session commands
//! ([`session`]) and catalog look-ups ([`catalog`]) are answered here, everything else
//! goes through [`NodeHandle::query`], the path of `POST /sql` (front door, tokens'
//! tables, admission, limits, one generation per statement). Parameters are written into
//! the statement as literals first ([`params`]). Errors get their SQLSTATE in
//! [`error`]; Arrow columns their Postgres types in [`encode`].
//!
//! Authentication: on a node with a tokens file the client is asked for a cleartext
//! password, which must be a token's secret (tokens are stored hashed, so MD5 and SCRAM,
//! which need the password itself, are impossible). TLS is not offered (an SSLRequest is
//! answered `N`): use a loopback listener, or a tunnel, when tokens cross a network.

mod catalog;
mod encode;
mod error;
mod handler;
mod params;
mod session;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{SinkExt, StreamExt};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{ClientInfo, ConnectionManager, NoopHandler, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use query_actors::auth::Principal;
use query_actors::node::{Admitted, NodeHandle};
use query_actors::sql::SqlPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use error::PgError;
use handler::{Handler, Statement};
use session::Settings;

/// What one statement gives the client.
pub enum Outcome {
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        /// Where the rows are encoded (the pool the query ran on).
        pool: Option<SqlPool>,
        /// The query's place among the running ones, held until its rows are encoded.
        place: Option<Admitted>,
        /// Cut at `[http] max_result_rows` (said in a warning before the rows).
        truncated: bool,
    },
    Command(String),
    Begin,
    End(String),
    Empty,
}

impl Outcome {
    fn rows(batch: RecordBatch) -> Outcome {
        Outcome::Rows {
            schema: batch.schema(),
            batches: vec![batch],
            pool: None,
            place: None,
            truncated: false,
        }
    }
}

/// Time a client has to finish its startup (SSL negotiation, startup message, password).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A refusal at `max_connections` is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Runs one statement for `who`.
async fn execute(
    node: &NodeHandle,
    who: &Principal,
    sql: &str,
    settings: &Settings,
) -> Result<Outcome, PgError> {
    node.metrics.pg_statements.fetch_add(1, Ordering::Relaxed);
    let limit = node.config.http.max_body_bytes;
    if sql.len() > limit {
        return Err(PgError::TooLong(sql.len(), limit));
    }
    let trimmed = sql.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() {
        return Ok(Outcome::Empty);
    }
    if let Some(outcome) = session::command(trimmed, settings)? {
        return Ok(outcome);
    }
    if let Some(outcome) = catalog::answer(node, who, trimmed).await? {
        return Ok(outcome);
    }
    let answer = node.query(trimmed.to_string(), who).await;
    if let Err(query_actors::QueryError::Forbidden(m)) = &answer {
        node.auth.refused("table", m, &who.name);
    }
    let answer = answer?;
    Ok(Outcome::Rows {
        schema: answer.output.schema.clone(),
        truncated: answer.output.truncated,
        batches: answer.output.batches,
        pool: Some(answer.pool),
        place: Some(answer.place),
    })
}

/// Binds `[pg] listen` if set (on a node that answers SQL) and serves it on the current
/// runtime; prints `postgres listening on ADDR` (scripts and tests read the port there).
pub async fn serve(node: NodeHandle) -> io::Result<()> {
    let Some(listen) = node.config.pg.listen else {
        return Ok(());
    };
    if !node.config.role.answers_sql() {
        return Ok(());
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("[pg] cannot listen on {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    println!("postgres listening on {addr}");
    tracing::info!(%addr, "Postgres protocol: psql -h {} -p {}", addr.ip(), addr.port());
    // Supervised: the bound socket outlives the accept loop, a restart accepts on a copy.
    let listener = listener.into_std()?;
    let supervisor = node.supervisor.clone();
    supervisor.spawn_local_task("pg_listener", move || {
        let node = node.clone();
        let listener = listener.try_clone().and_then(TcpListener::from_std);
        async move {
            match listener {
                Ok(l) => accept_loop(node, l).await,
                Err(e) => tracing::error!(error = %e, "[pg] listener unusable"),
            }
        }
    });
    Ok(())
}

async fn accept_loop(node: NodeHandle, listener: TcpListener) {
    let pg = node.config.pg.clone();
    let manager = Arc::new(ConnectionManager::new());
    let handler = Arc::new(Handler::new(node.clone(), manager.clone()));
    let cancel = Arc::new(DefaultCancelHandler::new(manager));
    let slots = Arc::new(Semaphore::new(pg.max_connections));
    let started = Instant::now();
    let last_log = Arc::new(AtomicU64::new(0));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "[pg] accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // As PostgreSQL does: replies leave in several writes, and Nagle's algorithm would hold
        // the last one for the client's delayed ACK (see http-api/src/lib.rs).
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "[pg] cannot set TCP_NODELAY");
        }
        let (handler, cancel, idle) = (handler.clone(), cancel.clone(), pg.idle_timeout);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let metrics = node.metrics.clone();
                metrics.pg_connections.fetch_add(1, Ordering::Relaxed);
                actix_rt::spawn(async move {
                    connection(handler, cancel, socket, idle).await;
                    metrics.pg_connections.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                node.metrics.pg_refused.fetch_add(1, Ordering::Relaxed);
                let now = started.elapsed().as_secs() + LOG_EVERY.as_secs();
                let last = last_log.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= LOG_EVERY.as_secs() {
                    last_log.store(now, Ordering::Relaxed);
                    tracing::warn!(%peer, max = pg.max_connections, "[pg] connection refused: max_connections reached");
                }
                let max = pg.max_connections;
                actix_rt::spawn(refuse(socket, max));
            }
        }
    }
}

/// Tells a client over the limit why, in the protocol it speaks, and closes.
async fn refuse(socket: TcpStream, max: usize) {
    let Ok(Ok(Some(mut socket))) =
        tokio::time::timeout(STARTUP_TIMEOUT, negotiate_tls::<Statement>(socket, None)).await
    else {
        return;
    };
    let _ = tokio::time::timeout(STARTUP_TIMEOUT, socket.next()).await;
    let error = ErrorInfo::new(
        "FATAL".into(),
        "53300".into(),
        format!(
            "sorry, too many clients already: {max} connections are open ([pg] max_connections)"
        ),
    );
    let _ = socket
        .send(PgWireBackendMessage::ErrorResponse(error.into()))
        .await;
}

/// Serves one connection until the client leaves, goes idle past `idle`, or sends what
/// cannot be read.
async fn connection(
    handler: Arc<Handler>,
    cancel: Arc<DefaultCancelHandler>,
    socket: TcpStream,
    idle: Duration,
) {
    let metrics = handler.node.metrics.clone();
    let Ok(Ok(Some(mut socket))) =
        tokio::time::timeout(STARTUP_TIMEOUT, negotiate_tls::<Statement>(socket, None)).await
    else {
        return;
    };
    let noop = Arc::new(NoopHandler);
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let wait = if starting { STARTUP_TIMEOUT } else { idle };
        let msg = match tokio::time::timeout(wait, socket.next()).await {
            Err(_) => {
                let (code, what) = if starting {
                    ("08P01", "the startup took too long")
                } else {
                    (
                        "57P05",
                        "the connection was idle too long ([pg] idle_timeout)",
                    )
                };
                metrics.record_pg_error(code);
                let error = ErrorInfo::new(
                    "FATAL".into(),
                    code.into(),
                    format!("terminating connection: {what}"),
                );
                let _ = socket
                    .send(PgWireBackendMessage::ErrorResponse(error.into()))
                    .await;
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                // Bytes that are no message (or too large a one): say so and close, as
                // the stream cannot be resynchronised.
                let code = e.code().to_string();
                metrics.record_pg_error(&code);
                tracing::debug!(error = %e, "[pg] unreadable message; closing the connection");
                let error = ErrorInfo::new(
                    "FATAL".into(),
                    "08P01".into(),
                    format!("invalid message: {e}"),
                );
                let _ = socket
                    .send(PgWireBackendMessage::ErrorResponse(error.into()))
                    .await;
                return;
            }
            Ok(Some(Ok(m))) => m,
        };
        if matches!(msg, PgWireFrontendMessage::Terminate(_)) {
            return;
        }
        let extended = msg.is_extended_query();
        let is_cancel = matches!(msg, PgWireFrontendMessage::CancelRequest(_));
        let result = process_message(
            msg,
            &mut socket,
            handler.clone(),
            handler.clone(),
            handler.clone(),
            noop.clone(),
            cancel.clone(),
        )
        .await;
        if let Err(e) = result {
            metrics.record_pg_error(e.code());
            let fatal = e.is_fatal() || matches!(e, PgWireError::IoError(_));
            if process_error(&mut socket, e, extended).await.is_err() || fatal {
                return;
            }
        }
        if is_cancel {
            return;
        }
    }
}
