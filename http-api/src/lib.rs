//! The HTTP/JSON face of a node (actix-web): the endpoints, the web console, and the
//! server that `queryd` starts. Status codes are chosen in [`error`] alone.

pub mod encode;
pub mod error;
pub mod guard;
pub mod pg;
pub mod routes;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{middleware, web, App, HttpRequest, HttpResponse, HttpServer};
use query_actors::node::config::HttpConfig;
use query_actors::node::NodeHandle;
use query_actors::tls::{server_config, ClientCerts, TlsError};

use crate::error::ApiError;

/// Registers every endpoint; shared by the server and the tests.
pub fn configure(cfg: &mut web::ServiceConfig) {
    if routes::debug::enabled() {
        cfg.service(
            web::resource("/debug/panic")
                .route(web::post().to(routes::debug::inject_panic))
                .default_service(web::to(method_not_allowed)),
        );
    }
    cfg.service(
        web::resource("/sql")
            .route(web::post().to(routes::sql::post_sql))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/tables")
            .route(web::get().to(routes::tables::get_tables))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/alerts")
            .route(web::get().to(routes::alerts::get_alerts))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/alerts/test")
            .route(web::post().to(routes::alerts::test))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/reports")
            .route(web::get().to(routes::reports::get_reports))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/admin/quarantine/lift")
            .route(web::post().to(routes::admin::lift_quarantine))
            .default_service(web::to(method_not_allowed)),
    )
    .route("/health", web::get().to(routes::health::get_health))
    .route("/metrics", web::get().to(routes::metrics::get_metrics))
    .route("/", web::get().to(routes::console::get_console))
    .route(
        "/console/uplot.js",
        web::get().to(routes::console::get_uplot_js),
    )
    .route(
        "/console/uplot.css",
        web::get().to(routes::console::get_uplot_css),
    )
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no such endpoint: {}",
        req.path()
    )))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(req.method().to_string()))
}

/// Counts responses by status for `/metrics`.
async fn count_status(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let node = req.app_data::<web::Data<NodeHandle>>().cloned();
    let resp = next.call(req).await?;
    if let Some(node) = node {
        node.metrics.record_http(resp.status().as_u16());
    }
    Ok(resp)
}

/// How `[http.tls]` asks clients for certificates: not without `ca`; with `ca`, required
/// on a node without tokens (the handshake is then the only check), optional beside a
/// tokens file (a client presents a certificate its `[[client]]` entry grants, or a token).
pub fn client_certs(http: &HttpConfig, tokens: bool) -> ClientCerts {
    match http.tls.as_ref().and_then(|t| t.ca.as_ref()) {
        None => ClientCerts::NotAsked,
        Some(_) if tokens => ClientCerts::OptionalOtherCa,
        Some(_) => ClientCerts::RequiredOtherCa,
    }
}

/// The rustls server of `[http.tls]` (`None`: plain HTTP); `tokens`: the node has a tokens
/// file ([`client_certs`]).
pub fn tls_server_config(
    http: &HttpConfig,
    tokens: bool,
) -> Result<Option<rustls::ServerConfig>, TlsError> {
    let Some(cfg) = &http.tls else {
        return Ok(None);
    };
    Ok(Some(std::sync::Arc::unwrap_or_clone(server_config(
        cfg,
        client_certs(http, tokens),
    )?)))
}

/// The common name of the certificate an HTTPS client presented (trusted: the handshake
/// checked it against `[http.tls] ca`), kept with the connection for the guard.
#[derive(Debug, Clone)]
pub struct ClientCertName(pub String);

/// Called by actix-web for each new connection: records the client certificate's name.
/// A certificate without a common name names no one (the client then needs a token).
fn on_connect(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    let Some(tls) = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>() else {
        return;
    };
    let (_, session) = tls.get_ref();
    if let Some(name) = session
        .peer_certificates()
        .and_then(query_actors::tls::peer_name)
    {
        data.insert(ClientCertName(name));
    }
}

/// Binds the node's HTTP listener (HTTPS with `[http.tls]`) and runs until the system
/// stops. Prints the bound address (useful with port 0) and the console URL.
pub async fn serve(node: NodeHandle) -> std::io::Result<()> {
    let http = node.config.http.clone();
    // Read before binding: a missing or bad file stops the start, naming it.
    let tls = tls_server_config(&http, node.auth.enabled())
        .map_err(|e| std::io::Error::other(format!("[http.tls]: {e}")))?;
    let workers = if http.workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        http.workers
    };
    // The Postgres listener first: a port taken stops the start like HTTP's would.
    pg::serve(node.clone()).await?;
    let mut installed = node.installed();
    let data = web::Data::new(node);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            // Host, Origin and token first; refusals are counted by status like the rest.
            .wrap(middleware::from_fn(guard::guard))
            .wrap(middleware::from_fn(count_status))
            .wrap(middleware::Compress::default())
            .configure(configure)
    })
    .on_connect(on_connect)
    // An answer goes out at once: with Nagle's algorithm, a response written in pieces
    // waited for the client's delayed ACK (40 ms on a small query, BENCHMARKS.md "SQL").
    .tcp_nodelay(true)
    .workers(workers);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = match tls {
        Some(tls) => server.bind_rustls_0_23(http.listen, tls),
        None => server.bind(http.listen),
    }
    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", http.listen)))?;
    let mut urls = Vec::new();
    for addr in server.addrs() {
        // Scripts and tests read this line to learn the port (and the scheme).
        println!("listening on {scheme}://{addr}/");
        urls.push(format!("{scheme}://{addr}/"));
    }
    // The console's address is the last line of the start: logged once the first
    // generation is served (the start's own lines, of every in-process node, come before).
    actix_web::rt::spawn(async move {
        let _ = installed.changed().await;
        for url in urls {
            tracing::info!(%url, "Query console at {url} (the first generation is served)");
        }
    });
    server.run().await
}
