//! A small HTTP/1.1 server for the metrics listener (`GET /metrics`,
//! `GET /health`) and the matching client for `tls-policyd status`.
//!
//! Only what a Prometheus scraper and a health check need: `GET` and
//! `HEAD`, no request bodies, one request per connection
//! (`Connection: close`). Everything is bounded: the request head (request
//! line plus headers) by [`MAX_REQUEST_HEAD`], the time to send it by
//! [`REQUEST_TIMEOUT`], connections at once by [`MAX_CONNECTIONS`]; the
//! client reads at most [`MAX_RESPONSE`] bytes.

use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::listen::{Conn, ListenAddr, Listener};

/// Longest request line plus headers, in bytes.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// Time allowed to receive the request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest response the client accepts, in bytes.
pub const MAX_RESPONSE: usize = 4 << 20;
/// Time the client allows for connecting, and for each read and write.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    fn text(status: u16, body: &str) -> Response {
        Response::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    TooLarge,
    Malformed(&'static str),
    Version,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::TooLarge => {
                write!(f, "request head longer than {MAX_REQUEST_HEAD} bytes")
            }
            RequestError::Malformed(why) => write!(f, "malformed request: {why}"),
            RequestError::Version => f.write_str("not HTTP/1.0 or HTTP/1.1"),
        }
    }
}

impl std::error::Error for RequestError {}

impl RequestError {
    fn status(&self) -> u16 {
        match self {
            RequestError::TooLarge => 431,
            RequestError::Malformed(_) => 400,
            RequestError::Version => 505,
        }
    }
}

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
}

/// Where the request head ends (just past the blank line), if it is
/// complete in `buf`. Bare `\n` line ends are accepted.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parse a complete request head.
pub fn parse_head(head: &[u8]) -> Result<Request, RequestError> {
    let text = std::str::from_utf8(head).map_err(|_| RequestError::Malformed("not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed(
            "request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RequestError::Malformed("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(RequestError::Malformed("bad request target"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(RequestError::Version);
    }
    for header in lines {
        if header.is_empty() {
            break;
        }
        let Some((name, _)) = header.split_once(':') else {
            return Err(RequestError::Malformed("header line without ':'"));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(RequestError::Malformed("bad header name"));
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
}

/// Read a request head: `Ok(None)` when the client closed before sending
/// anything.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<Request>, RequestError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            if end > MAX_REQUEST_HEAD {
                return Err(RequestError::TooLarge);
            }
            return parse_head(&buf[..end]).map(Some);
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Err(RequestError::TooLarge);
        }
        // Never buffer more than one byte past the limit.
        let want = chunk.len().min(MAX_REQUEST_HEAD + 1 - buf.len());
        let n = stream
            .read(&mut chunk[..want])
            .await
            .map_err(|_| RequestError::Malformed("read failed"))?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(RequestError::Malformed("connection closed mid-request"))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn encode(resp: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    if resp.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&resp.body);
    }
    bytes
}

/// Serve one connection: one request, one response.
async fn connection<S, H, F>(mut stream: S, handler: &H, timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(String) -> F,
    F: Future<Output = Response>,
{
    let head = match tokio::time::timeout(timeout, read_head(&mut stream)).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let _ = stream
                .write_all(&encode(&Response::text(408, "request timeout"), false))
                .await;
            return;
        }
    };
    let (resp, head_only) = match head {
        Err(e) => {
            tracing::debug!(error = %e, "metrics listener: bad request");
            (Response::text(e.status(), &e.to_string()), false)
        }
        Ok(r) if r.method == "GET" || r.method == "HEAD" => {
            (handler(r.path).await, r.method == "HEAD")
        }
        Ok(_) => (Response::text(405, "only GET and HEAD"), false),
    };
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&encode(&resp, head_only)).await?;
        stream.shutdown().await
    })
    .await;
}

/// Accept connections until `shutdown`, answering each request with
/// `handler(path)`.
pub async fn serve<H, F>(listener: Listener, handler: H, shutdown: CancellationToken)
where
    H: Fn(String) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send,
{
    serve_with(listener, handler, REQUEST_TIMEOUT, shutdown).await;
}

/// [`serve`] with a request timeout.
pub async fn serve_with<H, F>(
    listener: Listener,
    handler: H,
    timeout: Duration,
    shutdown: CancellationToken,
) where
    H: Fn(String) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send,
{
    let handler = Arc::new(handler);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((conn, _peer)) => {
                let handler = handler.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    match conn {
                        Conn::Tcp(s) => connection(s, &*handler, timeout).await,
                        Conn::Unix(s) => connection(s, &*handler, timeout).await,
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Why the client got no usable response.
#[derive(Debug)]
pub enum ClientError {
    Connect(ListenAddr, io::Error),
    Io(io::Error),
    TooLarge,
    Malformed(&'static str),
    Status(u16, String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(a, e) => write!(f, "cannot connect to {a}: {e}"),
            ClientError::Io(e) => write!(f, "reading the response: {e}"),
            ClientError::TooLarge => write!(f, "response longer than {MAX_RESPONSE} bytes"),
            ClientError::Malformed(why) => write!(f, "malformed response: {why}"),
            ClientError::Status(code, body) => write!(f, "HTTP status {code}: {}", body.trim()),
        }
    }
}

impl std::error::Error for ClientError {}

/// `GET path` from a listener address; the body of a 200 response.
/// Blocking, with [`CLIENT_TIMEOUT`] per step.
pub fn get(addr: &ListenAddr, path: &str) -> Result<Vec<u8>, ClientError> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let raw = match addr {
        ListenAddr::Inet(a) => {
            let mut s = std::net::TcpStream::connect_timeout(a, CLIENT_TIMEOUT)
                .map_err(|e| ClientError::Connect(addr.clone(), e))?;
            s.set_read_timeout(Some(CLIENT_TIMEOUT))
                .map_err(ClientError::Io)?;
            s.set_write_timeout(Some(CLIENT_TIMEOUT))
                .map_err(ClientError::Io)?;
            exchange(&mut s, request.as_bytes())?
        }
        ListenAddr::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p)
                .map_err(|e| ClientError::Connect(addr.clone(), e))?;
            s.set_read_timeout(Some(CLIENT_TIMEOUT))
                .map_err(ClientError::Io)?;
            s.set_write_timeout(Some(CLIENT_TIMEOUT))
                .map_err(ClientError::Io)?;
            exchange(&mut s, request.as_bytes())?
        }
    };
    parse_response(&raw)
}

fn exchange<S: Read + Write>(s: &mut S, request: &[u8]) -> Result<Vec<u8>, ClientError> {
    s.write_all(request).map_err(ClientError::Io)?;
    let mut raw = Vec::new();
    let n = s
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(ClientError::Io)?;
    if n > MAX_RESPONSE {
        return Err(ClientError::TooLarge);
    }
    Ok(raw)
}

/// Status line, headers, then a body of `Content-Length` bytes (or up to
/// the end).
pub fn parse_response(raw: &[u8]) -> Result<Vec<u8>, ClientError> {
    let end = head_end(raw).ok_or(ClientError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end])
        .map_err(|_| ClientError::Malformed("headers are not UTF-8"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(ClientError::Malformed("bad status line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ClientError::Malformed("not HTTP/1.x"));
    }
    let code: u16 = code
        .parse()
        .map_err(|_| ClientError::Malformed("bad status code"))?;
    let mut length = None;
    for l in lines {
        if let Some((name, value)) = l.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| ClientError::Malformed("bad Content-Length"))?,
            );
        }
    }
    let body = &raw[end..];
    let body = match length {
        Some(n) if n > body.len() => return Err(ClientError::Malformed("body cut short")),
        Some(n) => &body[..n],
        None => body,
    };
    if code != 200 {
        return Err(ClientError::Status(
            code,
            String::from_utf8_lossy(body).into_owned(),
        ));
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let r = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert_eq!(
            parse_head(b"HEAD /health HTTP/1.0\n\n").unwrap().path,
            "/health"
        );
        for (bad, want) in [
            (
                &b"GET /metrics\r\n\r\n"[..],
                RequestError::Malformed("request line is not METHOD TARGET VERSION"),
            ),
            (
                b"GET  /metrics HTTP/1.1\r\n\r\n",
                RequestError::Malformed("request line is not METHOD TARGET VERSION"),
            ),
            (
                b"get /metrics HTTP/1.1\r\n\r\n",
                RequestError::Malformed("bad method"),
            ),
            (
                b"GET metrics HTTP/1.1\r\n\r\n",
                RequestError::Malformed("bad request target"),
            ),
            (b"GET /metrics HTTP/2\r\n\r\n", RequestError::Version),
            (
                b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
                RequestError::Malformed("header line without ':'"),
            ),
            (
                b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
                RequestError::Malformed("bad header name"),
            ),
            (
                b"GET /\xff HTTP/1.1\r\n\r\n",
                RequestError::Malformed("not UTF-8"),
            ),
        ] {
            assert_eq!(
                parse_head(bad),
                Err(want),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A request head of exactly `len` bytes.
    fn head_of(len: usize) -> Vec<u8> {
        let fixed = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        let mut h = b"GET / HTTP/1.1\r\nX: ".to_vec();
        h.extend(std::iter::repeat_n(b'a', len - fixed));
        h.extend_from_slice(b"\r\n\r\n");
        assert_eq!(h.len(), len);
        h
    }

    #[tokio::test]
    async fn head_size_limit_is_exact() {
        let ok = head_of(MAX_REQUEST_HEAD);
        let r = read_head(&mut &ok[..]).await.unwrap().unwrap();
        assert_eq!(r.path, "/");
        let big = head_of(MAX_REQUEST_HEAD + 1);
        assert_eq!(
            read_head(&mut &big[..]).await.unwrap_err(),
            RequestError::TooLarge
        );
        // Never more than the limit is buffered, however much is sent.
        let endless = vec![b'a'; 10 * MAX_REQUEST_HEAD];
        assert_eq!(
            read_head(&mut &endless[..]).await.unwrap_err(),
            RequestError::TooLarge
        );
        assert_eq!(read_head(&mut &b""[..]).await.unwrap(), None);
        assert_eq!(
            read_head(&mut &b"GET / HTTP/1.1\r\n"[..])
                .await
                .unwrap_err(),
            RequestError::Malformed("connection closed mid-request")
        );
    }

    async fn exchange_with(request: &[u8], timeout: Duration) -> String {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let handler = |path: String| async move {
            Response::text(if path == "/ok" { 200 } else { 404 }, &path)
        };
        let task = tokio::spawn(async move { connection(server, &handler, timeout).await });
        client.write_all(request).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn responses() {
        let r = exchange_with(b"GET /ok HTTP/1.1\r\n\r\n", REQUEST_TIMEOUT).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 4\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n/ok\n"), "{r}");
        assert_eq!(parse_response(r.as_bytes()).unwrap(), b"/ok\n");
        let r = exchange_with(b"HEAD /ok HTTP/1.1\r\n\r\n", REQUEST_TIMEOUT).await;
        assert!(r.contains("Content-Length: 4\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");
        let r = exchange_with(b"GET /nope HTTP/1.1\r\n\r\n", REQUEST_TIMEOUT).await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert!(matches!(
            parse_response(r.as_bytes()),
            Err(ClientError::Status(404, _))
        ));
        let r = exchange_with(b"POST /ok HTTP/1.1\r\n\r\n", REQUEST_TIMEOUT).await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");
        let r = exchange_with(&head_of(MAX_REQUEST_HEAD + 1), REQUEST_TIMEOUT).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        let r = exchange_with(b"GARBAGE\r\n\r\n", REQUEST_TIMEOUT).await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    }

    #[tokio::test]
    async fn slow_client_gets_408() {
        let (mut client, server) = tokio::io::duplex(1024);
        let handler = |_path: String| async move { Response::text(200, "x") };
        let task =
            tokio::spawn(
                async move { connection(server, &handler, Duration::from_millis(50)).await },
            );
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn client_response_parsing() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabcd").unwrap(),
            b"ab"
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\n\r\nrest").unwrap(),
            b"rest"
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"SMTP 220 hello\r\n\r\n",
            b"HTTP/1.1 2xx OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
        ] {
            assert!(
                matches!(parse_response(bad), Err(ClientError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
