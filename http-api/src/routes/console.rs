//! `GET /`: the web console, one self-contained page; `GET /console/uplot.js` and
//! `/console/uplot.css`: the charting library its Graphs page uses (uPlot, vendored under
//! `console/vendor/uplot/`), compiled in so the console needs no network beyond the node.

use actix_web::http::header;
use actix_web::HttpResponse;

const PAGE: &str = include_str!("../console/index.html");
const UPLOT_JS: &str = include_str!("../console/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../console/vendor/uplot/uPlot.min.css");

/// The page links the assets with `?v=<uPlot version>`, so a new version is a new URL and
/// browsers may keep these for a year.
const ASSET_CACHE: &str = "public, max-age=31536000, immutable";

pub async fn get_console() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

pub async fn get_uplot_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, ASSET_CACHE))
        .body(UPLOT_JS)
}

pub async fn get_uplot_css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, ASSET_CACHE))
        .body(UPLOT_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page asks for the version it was built with: bumping uPlot without the page's
    /// `?v=` would leave browsers on the cached old copy.
    #[test]
    fn page_links_the_vendored_version() {
        let version = UPLOT_JS
            .lines()
            .next()
            .and_then(|l| l.split("(v").nth(1))
            .and_then(|l| l.split(')').next())
            .unwrap_or_default();
        assert!(!version.is_empty(), "version banner in uPlot.iife.min.js");
        assert!(
            PAGE.contains(&format!("/console/uplot.js?v={version}\"")),
            "index.html links uplot.js?v={version}"
        );
        assert!(
            PAGE.contains(&format!("/console/uplot.css?v={version}\"")),
            "index.html links uplot.css?v={version}"
        );
    }
}
