//! The metrics listener's HTTP/1.1 server (`GET /metrics`,
//! `GET /health`), on hyper, and the small client for `tls-policyd status`.
//!
//! Only what a Prometheus scraper and a health check need: `GET` and
//! `HEAD`, no request bodies, one request per connection
//! (`Connection: close`). Everything is bounded: the request head (request
//! line plus headers) by [`MAX_REQUEST_HEAD`], the time to send it by
//! [`REQUEST_TIMEOUT`] (and as long again to take the response),
//! connections at once by [`MAX_CONNECTIONS`]; the client reads at most
//! [`MAX_RESPONSE`] bytes.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::listen::{self, Accepted, Admission, Drain, ListenAddr, Listener};

/// Longest request line plus headers, in bytes (no lower than hyper's
/// smallest read buffer, 8192).
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

/// An answer written on the bare connection, for the two refusals hyper
/// would make by closing without a word: a request head not complete
/// within the timeout (408), or cut short by the client (400).
fn plain(status: StatusCode, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len() + 1
    )
    .into_bytes()
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

/// The connection settings: one request, a bounded head that must arrive
/// within `timeout`, and response headers spelled as they always were
/// (`Content-Type`, no `Date`).
fn builder(timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(false)
        // A client may shut its side down once it has asked.
        .half_close(true)
        .title_case_headers(true)
        .auto_date_header(false)
        // Never buffer more than the limit; a complete head longer than it
        // is refused too: 431 either way.
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_header_size(MAX_REQUEST_HEAD)
        // The head's size is the bound, not the number of header lines
        // (the shortest, "a:\n", takes three bytes).
        .max_headers(MAX_REQUEST_HEAD / 3)
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    b
}

/// A request target of the form `/path?query`.
fn origin_form(uri: &Uri) -> bool {
    uri.scheme().is_none() && uri.authority().is_none() && uri.path().starts_with('/')
}

/// Answer one parsed request: `GET` and `HEAD` go to `handler(path)`
/// (path without the query string); hyper drops the body of a `HEAD`
/// answer and keeps its `Content-Length`.
async fn answer<H, F>(
    handler: &H,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible>
where
    H: Fn(String) -> F,
    F: Future<Output = Response>,
{
    let method = req.method();
    let resp = if !method.as_str().bytes().all(|b| b.is_ascii_uppercase()) {
        Response::text(400, "malformed request: bad method")
    } else if !origin_form(req.uri()) {
        Response::text(400, "malformed request: bad request target")
    } else if method == Method::GET || method == Method::HEAD {
        handler(req.uri().path().to_string()).await
    } else {
        Response::text(405, "only GET and HEAD")
    };
    Ok(to_hyper(resp))
}

fn to_hyper(resp: Response) -> hyper::Response<Full<Bytes>> {
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let length = resp.body.len();
    let mut r = hyper::Response::new(Full::new(Bytes::from(resp.body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(resp.content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    r
}

/// Serve one connection: one request, one response. hyper answers a
/// malformed head (400) or one over [`MAX_REQUEST_HEAD`] (431) itself; a
/// head not complete within `timeout` gets a 408, one cut short a 400; a
/// response then has `timeout` to go out.
async fn connection<S, H, F>(stream: S, handler: &H, timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(String) -> F,
    F: Future<Output = Response>,
{
    let asked = Notify::new();
    let service = service_fn(|req| {
        asked.notify_one();
        answer(handler, req)
    });
    let mut conn = builder(timeout).serve_connection(TokioIo::new(stream), service);
    let finished = tokio::select! {
        r = &mut conn => r,
        _ = asked.notified() => {
            let _ = tokio::time::timeout(timeout, &mut conn).await;
            return;
        }
        // Only a refusal that the client does not read can still be
        // going out here.
        _ = tokio::time::sleep(2 * timeout) => return,
    };
    let refusal = match finished {
        Ok(()) => return,
        Err(e) if e.is_timeout() => plain(StatusCode::REQUEST_TIMEOUT, "request timeout"),
        Err(e) if e.is_incomplete_message() => {
            tracing::debug!(error = %e, "metrics listener: bad request");
            plain(
                StatusCode::BAD_REQUEST,
                "malformed request: connection closed mid-request",
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, "metrics listener: bad request");
            return;
        }
    };
    let mut stream = conn.into_parts().io.into_inner();
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&refusal).await?;
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
    let admission = Admission {
        name: "metrics listener",
        max_connections: MAX_CONNECTIONS,
        drain: Drain::Abort,
        metrics: None,
    };
    listen::serve(
        listener,
        admission,
        shutdown,
        move |conn, _peer, _opened| {
            let handler = handler.clone();
            async move {
                match conn {
                    Accepted::Tcp(s) => connection(s, &*handler, timeout).await,
                    Accepted::Unix(s) => connection(s, &*handler, timeout).await,
                }
            }
        },
    )
    .await;
}

/// Why the client got no usable response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {0}: {1}")]
    Connect(ListenAddr, io::Error),
    #[error("reading the response: {0}")]
    Io(io::Error),
    #[error("response longer than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("HTTP status {0}: {body}", body = .1.trim())]
    Status(u16, String),
}

/// `GET path` from a listener address; the body of a 200 response.
/// Blocking, with [`CLIENT_TIMEOUT`] per step.
pub fn get(addr: &ListenAddr, path: &str) -> Result<Vec<u8>, ClientError> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let connect = |e| ClientError::Connect(addr.clone(), e);
    let raw = match addr {
        ListenAddr::Inet(a) => talk(
            std::net::TcpStream::connect_timeout(a, CLIENT_TIMEOUT).map_err(connect)?,
            request.as_bytes(),
        )?,
        ListenAddr::Unix(p) => talk(
            std::os::unix::net::UnixStream::connect(p).map_err(connect)?,
            request.as_bytes(),
        )?,
    };
    parse_response(&raw)
}

/// A blocking stream whose reads and writes can time out.
trait Timed: Read + Write {
    fn set_timeouts(&self, t: Duration) -> io::Result<()>;
}

impl Timed for std::net::TcpStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Timed for std::os::unix::net::UnixStream {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

/// Send `request` with [`CLIENT_TIMEOUT`] per step; the raw response.
fn talk<S: Timed>(mut s: S, request: &[u8]) -> Result<Vec<u8>, ClientError> {
    s.set_timeouts(CLIENT_TIMEOUT).map_err(ClientError::Io)?;
    exchange(&mut s, request)
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
    use tokio::io::AsyncReadExt;

    /// Send `request`, close the sending side, read the whole answer.
    async fn exchange(request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let handler = |path: String| async move {
            Response::text(if path == "/ok" { 200 } else { 404 }, &path)
        };
        let task = tokio::spawn(async move { connection(server, &handler, REQUEST_TIMEOUT).await });
        // The server may stop reading (and drop its end) early.
        let _ = client.write_all(request).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn request_lines() {
        // The path goes to the handler without its query string.
        let r = exchange(b"GET /ok?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n/ok\n"), "{r}");
        // HTTP/1.0 and bare \n line ends.
        let r = exchange(b"HEAD /ok HTTP/1.0\n\n").await;
        assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 4\r\n"), "{r}");
        for (bad, body) in [
            (&b"GET /metrics\r\n\r\n"[..], None),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", None),
            (
                b"get /metrics HTTP/1.1\r\n\r\n",
                Some("malformed request: bad method\n"),
            ),
            (
                b"GET http://localhost/metrics HTTP/1.1\r\n\r\n",
                Some("malformed request: bad request target\n"),
            ),
            (b"GET metrics HTTP/1.1\r\n\r\n", None),
            (b"GET /metrics HTTP/2\r\n\r\n", None),
            (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", None),
            (b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", None),
            (b"GET /\xff HTTP/1.1\r\n\r\n", None),
            (
                b"GET / HTTP/1.1\r\n",
                Some("malformed request: connection closed mid-request\n"),
            ),
        ] {
            let r = exchange(bad).await;
            let what = String::from_utf8_lossy(bad);
            assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{what}: {r}");
            assert!(r.contains("Connection: close\r\n"), "{what}: {r}");
            if let Some(body) = body {
                assert!(r.ends_with(&format!("\r\n\r\n{body}")), "{what}: {r}");
            }
        }
        // A client that connects and closes gets nothing.
        assert_eq!(exchange(b"").await, "");
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
        // The handler answers 404 for "/": the request was read.
        let r = exchange(&head_of(MAX_REQUEST_HEAD)).await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        let r = exchange(&head_of(MAX_REQUEST_HEAD + 1)).await;
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{r}"
        );
        // However much is sent without an end of head.
        let r = exchange(&vec![b'a'; 10 * MAX_REQUEST_HEAD]).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b"X: a\r\n", 2 * MAX_REQUEST_HEAD).flatten());
        let r = exchange(&endless).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        // Many short header lines within the limit are fine.
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        while many.len() + 5 + 2 <= MAX_REQUEST_HEAD {
            many.extend_from_slice(b"X:a\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let r = exchange(&many).await;
        assert!(
            r.starts_with("HTTP/1.1 404 "),
            "{} header lines: {r}",
            many.len() / 5
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

    #[tokio::test]
    async fn response_headers() {
        let r = exchange_with(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n", REQUEST_TIMEOUT).await;
        let head = &r[..r.find("\r\n\r\n").unwrap() + 2];
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 4\r\n\
             Cache-Control: no-store\r\n\
             Connection: close\r\n"
        );
        // One request per connection: a second one is not read.
        let r = exchange_with(
            b"GET /ok HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n",
            REQUEST_TIMEOUT,
        )
        .await;
        assert!(r.ends_with("\r\n\r\n/ok\n"), "{r}");
        assert_eq!(r.matches("HTTP/1.1").count(), 1, "{r}");
        // A client that closes its side once it has asked still gets the
        // answer.
        let r = exchange(b"GET /ok HTTP/1.1\r\n\r\n").await;
        assert!(r.ends_with("\r\n\r\n/ok\n"), "{r}");
    }

    fn bind(addr: &str) -> Listener {
        Listener::bind(&addr.parse().unwrap(), &Default::default()).unwrap()
    }

    async fn handler(path: String) -> Response {
        Response::text(if path == "/ok" { 200 } else { 404 }, &path)
    }

    /// Listeners on a port and on a socket file: both answer until
    /// shutdown; then in-flight connections are dropped and nothing more
    /// is accepted.
    #[tokio::test]
    async fn serves_inet_and_unix_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("metrics.sock");
        for l in [
            bind("inet:127.0.0.1:0"),
            bind(&format!("unix:{}", sock.display())),
        ] {
            let addr = l.local_addr().unwrap();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve(l, handler, shutdown.clone()));
            let a = addr.clone();
            let body = tokio::task::spawn_blocking(move || get(&a, "/ok"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(body, b"/ok\n", "{addr}");
            let a = addr.clone();
            let e = tokio::task::spawn_blocking(move || get(&a, "/nope"))
                .await
                .unwrap()
                .unwrap_err();
            assert!(matches!(e, ClientError::Status(404, _)), "{addr}: {e}");
            // A connection that has sent half a request is cut on shutdown,
            // well before its request timeout.
            let mut idle = connect(&addr).await;
            idle.write_all(b"GET /ok HTTP/1.1\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let started = std::time::Instant::now();
            shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .expect("serve returns on shutdown")
                .unwrap();
            let mut out = Vec::new();
            let _ = idle.read_to_end(&mut out).await;
            assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
            assert!(started.elapsed() < REQUEST_TIMEOUT);
            let a = addr.clone();
            let e = tokio::task::spawn_blocking(move || get(&a, "/ok"))
                .await
                .unwrap()
                .unwrap_err();
            assert!(matches!(e, ClientError::Connect(..)), "{addr}: {e}");
        }
        assert!(!sock.exists());
    }

    enum Stream {
        Tcp(tokio::net::TcpStream),
        Unix(tokio::net::UnixStream),
    }

    impl Stream {
        async fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
            match self {
                Stream::Tcp(s) => s.write_all(b).await,
                Stream::Unix(s) => s.write_all(b).await,
            }
        }

        async fn read_to_end(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
            match self {
                Stream::Tcp(s) => s.read_to_end(out).await,
                Stream::Unix(s) => s.read_to_end(out).await,
            }
        }
    }

    async fn connect(addr: &ListenAddr) -> Stream {
        match addr {
            ListenAddr::Inet(a) => Stream::Tcp(tokio::net::TcpStream::connect(a).await.unwrap()),
            ListenAddr::Unix(p) => Stream::Unix(tokio::net::UnixStream::connect(p).await.unwrap()),
        }
    }

    /// At most [`MAX_CONNECTIONS`] are served at once; the next waits for
    /// a free slot.
    #[tokio::test]
    async fn connections_at_once_are_bounded() {
        let l = bind("inet:127.0.0.1:0");
        let addr = l.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(l, handler, shutdown.clone()));
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut s = connect(&addr).await;
            s.write_all(b"GET /ok HTTP/1.1\r\n").await.unwrap();
            held.push(s);
        }
        let mut next = connect(&addr).await;
        next.write_all(b"GET /ok HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), next.read_to_end(&mut out))
                .await
                .is_err(),
            "answered while every slot was taken: {}",
            String::from_utf8_lossy(&out)
        );
        drop(held.pop());
        tokio::time::timeout(Duration::from_secs(10), next.read_to_end(&mut out))
            .await
            .expect("answered once a slot is free")
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.ends_with("\r\n\r\n/ok\n"), "{out}");
        shutdown.cancel();
        task.await.unwrap();
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
