//! The protocol handlers: authentication (the password is a token of the tokens file),
//! the simple and extended query protocols, each statement run by [`super::execute`].

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{stream, Sink, SinkExt};
use pgwire::api::auth::driver::{AuthDriver, AuthOutcome};
use pgwire::api::auth::mechanism::{AuthMechanism, AuthState};
use pgwire::api::auth::{
    protocol_negotiation, save_startup_parameters_to_metadata, DefaultServerParameterProvider,
    StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeResponse, DescribeStatementResponse, FieldInfo, QueryResponse,
    Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, Type, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use query_actors::auth::{Principal, Refusal};
use query_actors::node::NodeHandle;

use super::encode;
use super::error::{fatal, PgError};
use super::params;
use super::session::Settings;
use super::{execute, Outcome};

/// A statement of the extended protocol: its text and how many parameters it takes.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub params: usize,
}

pub struct StatementParser;

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        // Parsed (by the node's front door) when it runs: errors are reported then.
        Ok(Some(Statement {
            sql: sql.to_string(),
            params: params::count(sql),
        }))
    }

    fn get_parameter_types(&self, stmt: &Statement) -> PgWireResult<Vec<Type>> {
        Ok(vec![Type::TEXT; stmt.params])
    }

    fn get_result_schema(
        &self,
        _stmt: &Statement,
        _format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(Vec::new())
    }
}

/// The answer computed for a Describe, kept for the Execute that follows it (clients send
/// Bind, Describe, Execute together): the statement runs once.
#[derive(Default)]
struct Described(Mutex<Option<(String, Outcome)>>);

pub struct Handler {
    pub node: NodeHandle,
    parser: Arc<StatementParser>,
    driver: AuthDriver<DefaultServerParameterProvider, Principal>,
}

impl Handler {
    pub fn new(node: NodeHandle, manager: Arc<ConnectionManager>) -> Handler {
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = "16.6-query".into();
        params.is_superuser = false;
        params.default_transaction_read_only = true;
        params.time_zone = "UTC".into();
        Handler {
            node,
            driver: AuthDriver::new(params).with_connection_manager(manager),
            parser: Arc::new(StatementParser),
        }
    }

    fn mechanism(&self) -> Box<dyn AuthMechanism<Principal>> {
        if self.node.auth.enabled() {
            Box::new(TokenPassword {
                node: self.node.clone(),
            })
        } else {
            Box::new(Anonymous)
        }
    }

    /// Runs `sql` for the connection's principal. `cancel`: a CancelRequest stops it here
    /// (pgwire does that itself around Query and Execute, not around Describe).
    async fn run<C>(&self, client: &C, sql: &str, cancel: bool) -> PgWireResult<Outcome>
    where
        C: ClientInfo,
    {
        let who = client
            .session_extensions()
            .get::<Principal>()
            .ok_or_else(|| fatal("28000", "the connection is not authenticated".into()))?;
        let settings = client
            .session_extensions()
            .get_or_insert_with(Settings::default);
        let work = execute(&self.node, &who, sql, &settings);
        let handle = client
            .session_extensions()
            .get::<Arc<ConnectionHandle>>()
            .filter(|_| cancel);
        let outcome = match handle {
            Some(handle) => cancellable(&handle, work).await?,
            None => work.await,
        };
        Ok(outcome?)
    }

    /// The statement of `portal` with its parameters written in.
    fn bound_sql(&self, portal: &Portal<Statement>) -> PgWireResult<String> {
        let stmt = &portal.statement;
        if stmt.statement.params == 0 {
            return Ok(stmt.statement.sql.clone());
        }
        let values = (0..stmt.statement.params)
            .map(|i| {
                params::literal(
                    portal.parameters.get(i).and_then(|v| v.as_deref()),
                    stmt.parameter_types.get(i).and_then(|t| t.as_ref()),
                    params::is_binary(&portal.parameter_format, i),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        if portal.parameters.len() != stmt.statement.params {
            return Err(PgError::Protocol(format!(
                "bind message supplies {} parameters, but the statement takes {}",
                portal.parameters.len(),
                stmt.statement.params
            ))
            .into());
        }
        Ok(params::substitute(&stmt.statement.sql, &values)?)
    }

    /// The outcome described for `sql` on this connection, if any, or a new run.
    async fn described_or_run<C>(&self, client: &C, sql: &str) -> PgWireResult<Outcome>
    where
        C: ClientInfo,
    {
        let slot = client
            .session_extensions()
            .get_or_insert_with(Described::default);
        let kept = slot.0.lock().ok().and_then(|mut s| s.take());
        match kept {
            Some((kept_sql, outcome)) if kept_sql == sql => Ok(outcome),
            _ => self.run(client, sql, false).await,
        }
    }

    /// The columns `sql` answers with, from a run; the answer is kept for the Execute
    /// that follows when `keep` (its place among running queries is not: a client may
    /// never send that Execute).
    async fn describe<C>(
        &self,
        client: &C,
        sql: &str,
        format: &Format,
        keep: bool,
    ) -> PgWireResult<Vec<FieldInfo>>
    where
        C: ClientInfo,
    {
        let mut outcome = self.run(client, sql, true).await?;
        let fields = match &mut outcome {
            Outcome::Rows { schema, place, .. } => {
                *place = None;
                encode::fields(schema, format)
            }
            _ => Vec::new(),
        };
        if keep {
            let slot = client
                .session_extensions()
                .get_or_insert_with(Described::default);
            if let Ok(mut s) = slot.0.lock() {
                *s = Some((sql.to_string(), outcome));
            };
        }
        Ok(fields)
    }
}

/// Runs `work` until it ends or the connection's CancelRequest arrives (57014).
async fn cancellable<T>(
    handle: &ConnectionHandle,
    work: impl Future<Output = T>,
) -> PgWireResult<T> {
    let cancelled = handle.start_query().await;
    tokio::select! {
        done = work => Ok(done),
        _ = cancelled => Err(PgWireError::QueryCanceled),
    }
}

/// A node with a tokens file: the password is a token's secret.
struct TokenPassword {
    node: NodeHandle,
}

#[async_trait]
impl AuthMechanism<Principal> for TokenPassword {
    async fn begin(
        &mut self,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> PgWireResult<AuthState<Principal>> {
        Ok(AuthState::InProgress(Authentication::CleartextPassword))
    }

    async fn next(
        &mut self,
        client: &(dyn ClientInfo + Send + Sync),
        message: PasswordMessageFamily,
    ) -> PgWireResult<AuthState<Principal>> {
        let password = message.into_password()?.password;
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        let auth = &self.node.auth;
        match auth.authenticate(
            Some(&format!("Bearer {password}")),
            Some(client.socket_addr()),
            None,
        ) {
            Ok(p) => Ok(AuthState::Ok {
                final_message: None,
                identity: Some(p),
            }),
            Err(refusal) => {
                auth.refused(refusal.reason(), &refusal.to_string(), &user);
                let (code, message) = match &refusal {
                    Refusal::Unauthenticated(_) => (
                        "28P01",
                        format!("password authentication failed for user \"{user}\": the password must be a token of this node's tokens file ([auth] tokens_file)"),
                    ),
                    other => ("28000", other.to_string()),
                };
                Ok(AuthState::Failed(fatal(code, message)))
            }
        }
    }
}

/// A node without tokens: everyone is anonymous, named by address.
struct Anonymous;

#[async_trait]
impl AuthMechanism<Principal> for Anonymous {
    async fn begin(
        &mut self,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> PgWireResult<AuthState<Principal>> {
        Ok(AuthState::Ok {
            final_message: None,
            identity: Some(Principal::anonymous(Some(client.socket_addr()))),
        })
    }

    async fn next(
        &mut self,
        _client: &(dyn ClientInfo + Send + Sync),
        _message: PasswordMessageFamily,
    ) -> PgWireResult<AuthState<Principal>> {
        Err(PgError::Protocol("no password was asked for".into()).into())
    }
}

#[async_trait]
impl StartupHandler for Handler {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                self.driver
                    .begin_authentication(client, self.mechanism())
                    .await?
            }
            PgWireFrontendMessage::PasswordMessageFamily(m) => {
                self.driver.advance_authentication(client, m).await?
            }
            _ => return Ok(()),
        };
        if let AuthOutcome::Authenticated {
            identity,
            final_message,
        } = outcome
        {
            let who = identity.ok_or_else(|| fatal("28000", "no identity".into()))?;
            client.session_extensions().insert(who);
            self.driver
                .complete_authentication(client, final_message)
                .await?;
        }
        Ok(())
    }
}

/// A warning before the rows of an answer cut at `[http] max_result_rows` (HTTP says
/// `"truncated": true`).
async fn warn_if_truncated<C>(
    client: &mut C,
    outcome: &Outcome,
    max_rows: usize,
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if let Outcome::Rows {
        truncated: true, ..
    } = outcome
    {
        let notice = ErrorInfo::new(
            "WARNING".to_owned(),
            "01000".to_owned(),
            format!(
                "the answer was cut at {max_rows} rows ([http] max_result_rows); add a LIMIT or aggregate"
            ),
        );
        client
            .send(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                notice,
            )))
            .await?;
    }
    Ok(())
}

/// The protocol response of `outcome`, its columns in `format`.
async fn response(outcome: Outcome, format: &Format) -> PgWireResult<Response> {
    Ok(match outcome {
        Outcome::Empty => Response::EmptyQuery,
        Outcome::Command(tag) => Response::Execution(Tag::new(&tag)),
        Outcome::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Outcome::End(tag) => Response::TransactionEnd(Tag::new(&tag)),
        Outcome::Rows {
            schema,
            batches,
            pool,
            place,
            ..
        } => {
            let fields = Arc::new(encode::fields(&schema, format));
            let f = fields.clone();
            let encode_all = async move {
                let mut rows = Vec::new();
                for b in &batches {
                    rows.extend(encode::rows(b, &f)?);
                }
                Ok::<_, PgError>(rows)
            };
            // Encoding is CPU work: on the pool the query ran on, off the event loop.
            let rows = match pool {
                Some(pool) => pool.run(encode_all).await.map_err(PgError::from)??,
                None => encode_all.await?,
            };
            drop(place);
            Response::Query(QueryResponse::new(
                fields,
                stream::iter(rows.into_iter().map(Ok)),
            ))
        }
    })
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outcome = self.run(client, query, false).await?;
        warn_if_truncated(client, &outcome, self.node.config.http.max_result_rows).await?;
        Ok(vec![response(outcome, &Format::UnifiedText).await?])
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = Statement;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        self.parser.clone()
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        target: &StoredStatement<Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &target.statement;
        // Parameters the client left untyped are taken as text (the planner coerces).
        let types: Vec<Type> = (0..stmt.params)
            .map(|i| {
                target
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        // The columns are those of a run with NULL parameters; without parameters, that
        // run is the one the Execute that follows gets.
        let nulls = vec!["NULL".to_string(); stmt.params];
        let sql = params::substitute(&stmt.sql, &nulls)?;
        let fields = self
            .describe(client, &sql, &Format::UnifiedText, stmt.params == 0)
            .await?;
        Ok(DescribeStatementResponse::new(types, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = self.bound_sql(portal)?;
        let fields = self
            .describe(client, &sql, &portal.result_column_format, true)
            .await?;
        if fields.is_empty() {
            return Ok(DescribePortalResponse::no_data());
        }
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let sql = self.bound_sql(portal)?;
        let outcome = self.described_or_run(client, &sql).await?;
        warn_if_truncated(client, &outcome, self.node.config.http.max_result_rows).await?;
        response(outcome, &portal.result_column_format).await
    }
}
