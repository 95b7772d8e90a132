//! Raw HTTP/1 for SSE streams: reading a request head and writing complete responses
//! directly on the socket, without hyper.
//!
//! Why: hyper keeps an 8 KiB read buffer (and its connection state) for the whole life of
//! a connection, which for a long-lived event stream is most of its memory. What this
//! bypasses: hyper, the axum router and every tower layer. A middleware added to the
//! router later (compression, request logging, CORS, auth) does NOT see `GET /sse`
//! requests that take this path; add the equivalent here or in [`super::sse`].
//! Everything read here is bounded in size and by the connection's head deadline.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head the raw path reads.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most request headers the raw path parses.
const MAX_HEADERS: usize = 64;
/// Bytes read from the socket at a time while the head is incomplete: a typical browser
/// request head fits in one read.
const HEAD_READ_BYTES: usize = 1024;
/// Largest body of a response written here: refusals and errors, a short JSON reason.
const MAX_RESPONSE_BODY_BYTES: usize = 64 * 1024;

/// A request head: path, query, headers.
pub type Head = (String, Option<String>, HeaderMap);

/// Reads and parses a request head: `(path, query, headers)`, or the status to answer.
pub async fn read_head(socket: &mut TcpStream) -> Result<Head, StatusCode> {
    let mut buf = Vec::with_capacity(HEAD_READ_BYTES);
    loop {
        let mut chunk = [0u8; HEAD_READ_BYTES];
        let n = socket
            .read(&mut chunk)
            .await
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        if n == 0 {
            return Err(StatusCode::BAD_REQUEST);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut parsed);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") {
                    return Err(StatusCode::METHOD_NOT_ALLOWED);
                }
                let target = req.path.unwrap_or("/");
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
                    None => (target.to_owned(), None),
                };
                let mut headers = HeaderMap::with_capacity(req.headers.len());
                for h in req.headers.iter() {
                    let name = axum::http::HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| StatusCode::BAD_REQUEST)?;
                    let value =
                        HeaderValue::from_bytes(h.value).map_err(|_| StatusCode::BAD_REQUEST)?;
                    headers.append(name, value);
                }
                return Ok((path, query, headers));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => continue,
            Ok(httparse::Status::Partial) => {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            Err(_) => return Err(StatusCode::BAD_REQUEST),
        }
    }
}

pub fn push_headers(out: &mut String, headers: &HeaderMap) {
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
}

pub async fn write_plain(socket: &mut TcpStream, status: StatusCode) -> std::io::Result<()> {
    write_response(socket, status.into_response()).await
}

/// Writes a small, complete response (refusals and errors) and closes.
pub async fn write_response(socket: &mut TcpStream, resp: Response) -> std::io::Result<()> {
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, MAX_RESPONSE_BODY_BYTES)
        .await
        .unwrap_or_default();
    let reason = parts.status.canonical_reason().unwrap_or("");
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nconnection: close\r\ncontent-length: {}\r\n",
        parts.status.as_u16(),
        body.len()
    );
    push_headers(&mut head, &parts.headers);
    head.push_str("\r\n");
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&body).await?;
    socket.shutdown().await
}
