//! The gate every request passes before its endpoint, in this order: its `Host` must name
//! this node (421 otherwise: DNS rebinding), its `Origin`, if any, must be the node's own
//! or an allowed one (403: cross-origin posts), and, when the node has tokens, it must
//! carry a known one for the node's domains, or come over a connection whose client
//! certificate a `[[client]]` entry grants (401, 403). The rules are
//! `query_actors::auth`'s; the [`Principal`] found goes into the request's extensions for
//! the endpoints (the client's identity, its tables, admin).
//!
//! `GET /health` (load balancers, no data), `GET /` (the console page: static, it asks
//! for a token itself) and the page's static assets (`/console/uplot.js`, `.css`: a
//! `<script>` tag sends no token) need no token; `/metrics` does (it names tables and views, and shows
//! the node's load).

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use query_actors::auth::{Principal, Refusal};
use query_actors::node::NodeHandle;

use crate::error::ApiError;

/// Paths answered without a token.
fn open_path(req: &ServiceRequest) -> bool {
    req.method() == Method::GET
        && matches!(
            req.path(),
            "/health" | "/" | "/console/uplot.js" | "/console/uplot.css"
        )
}

pub async fn guard<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let Some(node) = req.app_data::<web::Data<NodeHandle>>().cloned() else {
        return next.call(req).await.map(|r| r.map_into_left_body());
    };
    let auth = &node.auth;
    let peer = req.peer_addr();
    let client = || peer.map_or_else(|| "unknown".into(), |a| a.ip().to_string());
    let refuse = |req: ServiceRequest,
                  refusal: Refusal,
                  who: String|
     -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
        auth.refused(refusal.reason(), &refusal.to_string(), &who);
        let resp = ApiError::Refused(refusal).error_response();
        Ok(req.into_response(resp).map_into_right_body())
    };

    // Browsers always send Host; a client that sends none is not a page being rebound.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(h) = &host {
        if !auth.hosts.host_allowed(h) {
            let m = format!(
                "this node does not answer for Host '{h}': use its address or a name in [http] allowed_hosts"
            );
            return refuse(req, Refusal::Misdirected(m), client());
        }
    }

    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let mut cors = None;
    if let Some(o) = &origin {
        if !auth.hosts.origin_allowed(o, host.as_deref()) {
            let m = format!(
                "cross-origin requests from {o} are refused: only this node's own pages (or [http] allowed_origins) may call it"
            );
            return refuse(req, Refusal::CrossOrigin(m), client());
        }
        if auth.hosts.listed_origin(o) {
            cors = HeaderValue::from_str(o).ok();
            // A preflight carries no credentials: answered here, before authentication.
            if req.method() == Method::OPTIONS
                && req
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            {
                let resp = HttpResponse::NoContent()
                    .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, o.as_str()))
                    .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
                    .insert_header((
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        "authorization, content-type",
                    ))
                    .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                    .insert_header((header::VARY, "Origin"))
                    .finish();
                return Ok(req.into_response(resp).map_into_right_body());
            }
        }
    }

    if !open_path(&req) {
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let cert = req
            .conn_data::<crate::ClientCertName>()
            .map(|c| c.0.as_str());
        match auth.authenticate(authorization, peer, cert) {
            Ok(p) => {
                req.extensions_mut().insert(p);
            }
            Err(refusal) => return refuse(req, refusal, client()),
        }
    }

    let mut resp = next.call(req).await?;
    if let Some(o) = cors {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    Ok(resp.map_into_left_body())
}

/// The request's principal (the anonymous client when the guard did not run, as in tests
/// that mount the routes alone).
pub fn principal_of(req: &actix_web::HttpRequest) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(|| Principal::anonymous(req.peer_addr()))
}
