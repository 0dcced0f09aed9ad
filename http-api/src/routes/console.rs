//! `GET /`: the web console, one self-contained page.

use actix_web::HttpResponse;

const PAGE: &str = include_str!("../console/index.html");

pub async fn get_console() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}
