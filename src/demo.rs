//! Demo: serves the static demo page (and the browser client it uses) under `/demo/` from
//! `GATEWAY_DEMO_DIR`, off unless that is set. For trying the gateway in a browser, not
//! for production pages.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The directory served, if any: the router state of the demo routes.
#[derive(Clone, Default)]
pub struct DemoDir(pub Option<Arc<PathBuf>>);

/// Largest file served, so a wrong directory cannot make the gateway read huge files.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// `GET /demo` → `/demo/`.
pub async fn redirect() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(LOCATION, "/demo/")]).into_response()
}

/// `GET /demo/`.
pub async fn index(state: State<DemoDir>) -> Response {
    file(state, UrlPath(String::new())).await
}

/// `GET /demo/{*path}`.
pub async fn file(State(dir): State<DemoDir>, UrlPath(path): UrlPath<String>) -> Response {
    let Some(root) = dir.0.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(full) = resolve(root, &path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = tokio::fs::metadata(&full).await.map(|m| m.len());
    match len {
        Ok(len) if len <= MAX_FILE_BYTES => {}
        _ => return StatusCode::NOT_FOUND.into_response(),
    }
    match tokio::fs::read(&full).await {
        Ok(bytes) => {
            let mut resp = bytes.into_response();
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&full)));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Maps a URL path below `/demo/` to a file below `root`, refusing anything that could
/// leave it (`..`, absolute paths, odd characters).
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_owned()
    };
    let ok_chars = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    let rel = Path::new(&path);
    let ok_parts = rel.components().all(|c| matches!(c, Component::Normal(_)));
    (ok_chars && ok_parts).then(|| root.join(rel))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_demo_directory() {
        let root = Path::new("/srv/demo");
        assert_eq!(
            resolve(root, ""),
            Some(PathBuf::from("/srv/demo/index.html"))
        );
        assert_eq!(
            resolve(root, "lib/index.js"),
            Some(PathBuf::from("/srv/demo/lib/index.js"))
        );
        for bad in [
            "../etc/passwd",
            "lib/../../x",
            "/etc/passwd",
            "a\\b",
            "%2e%2e/x",
            "a b",
        ] {
            assert_eq!(resolve(root, bad), None, "{bad}");
        }
    }
}
