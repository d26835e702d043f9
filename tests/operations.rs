//! Operating the daemon: the metrics listener (`/metrics` in the
//! Prometheus text format, `/health`), `tls-policyd status` against a
//! running daemon, readiness notification to a systemd-style notify
//! socket, and shell completions. Everything runs the real binary on
//! 127.0.0.1 with port 0.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;

use common::fixtures::POLICY_BANK as POLICY;
use common::{Daemon, Options, WAIT, config, front_door_config, policy_request, run_with_timeout};

/// The common test config plus a metrics listener on a free port.
fn config_with_metrics() -> String {
    format!(
        "{}\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n",
        config("policy")
    )
}

fn start() -> (Daemon, String) {
    let d = Daemon::start(&config_with_metrics(), POLICY);
    let m = d.listening("metrics");
    (d, m)
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// One raw HTTP exchange: (status code, headers, body).
fn http(addr: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port_of(addr))).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head, raw[end + 4..].to_vec())
}

fn get(addr: &str, path: &str) -> (u16, String, String) {
    let (code, head, body) = http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    (code, head, String::from_utf8(body).unwrap())
}

fn scrape(addr: &str) -> String {
    let (code, head, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    check_exposition(&body);
    body
}

/// Check the Prometheus text format: every sample belongs to a family
/// declared once with HELP and TYPE before it, names and labels are well
/// formed, values are numbers, histogram buckets are cumulative and end
/// in `+Inf` equal to `_count`.
fn check_exposition(text: &str) {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helped = HashSet::new();
    let mut buckets: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    let mut counts: HashMap<String, f64> = HashMap::new();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helped.insert(name.to_string()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line: {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("labels end in }")),
            None => (series, ""),
        };
        assert!(name_ok(name), "bad metric name: {line}");
        let mut le = None;
        let mut other = Vec::new();
        if !labels.is_empty() {
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(name_ok(k), "bad label name: {line}");
                let v = v.trim_end_matches('"');
                if k == "le" {
                    le = Some(v.to_string());
                } else {
                    other.push(format!("{k}={v}"));
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("sample without TYPE: {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter not named _total: {line}");
            assert!(value >= 0.0, "{line}");
        }
        let key = format!("{family}|{}", other.join(","));
        if name.ends_with("_bucket") && kind == "histogram" {
            buckets
                .entry(key)
                .or_default()
                .push((le.expect("bucket has le"), value));
        } else if name.ends_with("_count") && kind == "histogram" {
            counts.insert(key, value);
        }
    }
    assert!(!buckets.is_empty(), "no histogram at all");
    for (key, bs) in &buckets {
        let mut prev = 0.0;
        let mut prev_le = f64::NEG_INFINITY;
        for (le, v) in bs {
            let le_v = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            assert!(le_v > prev_le, "{key}: buckets out of order");
            assert!(*v >= prev, "{key}: buckets not cumulative");
            prev = *v;
            prev_le = le_v;
        }
        assert_eq!(bs.last().unwrap().0, "+Inf", "{key}: last bucket");
        assert_eq!(Some(&prev), counts.get(key), "{key}: +Inf bucket != count");
    }
}

/// The value of one series (name with labels exactly as rendered).
fn series(text: &str, s: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(s)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[test]
fn metrics_count_socketmap_lookups_decisions_and_connections() {
    let (d, m) = start();
    let before = scrape(&m);
    assert_eq!(
        series(&before, "tls_policyd_lookups_total{frontend=\"socketmap\"}"),
        Some(0.0)
    );
    assert_eq!(series(&before, "tls_policyd_policy_rules"), Some(1.0));
    assert_eq!(
        series(&before, "tls_policyd_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );

    let mut c = d.client();
    assert_eq!(c.query("tls_policy", "bank.example"), "OK encrypt");
    assert_eq!(c.query("tls_policy", "Bank.Example."), "OK encrypt");
    assert_eq!(c.query("tls_policy", "other.example"), "OK may");
    assert_eq!(c.query("tls_forced", "other.example"), "OK encrypt");
    assert!(c.query("no_such_map", "x.example").starts_with("PERM "));
    // The connection is still open while we scrape.
    let t = scrape(&m);
    let v = |s: &str| series(&t, s);
    assert_eq!(
        v("tls_policyd_lookups_total{frontend=\"socketmap\"}"),
        Some(5.0)
    );
    assert_eq!(
        v("tls_policyd_lookup_duration_seconds_count{frontend=\"socketmap\"}"),
        Some(5.0)
    );
    assert_eq!(
        v(
            "tls_policyd_decisions_total{frontend=\"socketmap\",tls=\"forced\",level=\"encrypt\",source=\"static\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        v(
            "tls_policyd_decisions_total{frontend=\"socketmap\",tls=\"opportunistic\",level=\"may\",source=\"default\"}"
        ),
        Some(1.0)
    );
    // The forced map raised the default to encrypt.
    assert_eq!(
        v(
            "tls_policyd_decisions_total{frontend=\"socketmap\",tls=\"forced\",level=\"encrypt\",source=\"default\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        v("tls_policyd_errors_total{component=\"socketmap\",kind=\"unknown_map\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("tls_policyd_connections_open{frontend=\"socketmap\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("tls_policyd_connections_total{frontend=\"socketmap\"}"),
        Some(1.0)
    );
    // The PERM went to the operational log as a warning.
    assert_eq!(
        v("tls_policyd_log_messages_total{level=\"warn\"}"),
        Some(1.0)
    );

    // A framing error closes that connection and is counted.
    let mut bad = d.client();
    bad.send_raw(b"99999999999:x,").unwrap();
    assert!(bad.is_closed());
    drop(c);
    let deadline = std::time::Instant::now() + WAIT;
    let t = loop {
        let t = scrape(&m);
        if series(&t, "tls_policyd_connections_open{frontend=\"socketmap\"}") == Some(0.0)
            || std::time::Instant::now() > deadline
        {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(
        series(&t, "tls_policyd_connections_open{frontend=\"socketmap\"}"),
        Some(0.0),
        "{t}"
    );
    assert_eq!(
        series(&t, "tls_policyd_connections_total{frontend=\"socketmap\"}"),
        Some(2.0)
    );
    assert_eq!(
        series(
            &t,
            "tls_policyd_errors_total{component=\"socketmap\",kind=\"framing\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn metrics_listener_refuses_bad_requests_and_keeps_serving() {
    let (d, m) = start();
    let (code, _, body) = get(&m, "/nope");
    assert_eq!((code, body.as_str()), (404, "not found\n"));
    let (code, head, _) = http(&m, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(code, 405, "{head}");
    let (code, _, _) = http(&m, b"hello\r\n\r\n");
    assert_eq!(code, 400);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10_000));
    huge.extend_from_slice(b"\r\n\r\n");
    let (code, _, _) = http(&m, &huge);
    assert_eq!(code, 431);
    let (code, head, body) = http(&m, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(code, 200);
    assert!(
        body.is_empty() && head.contains("Content-Length: "),
        "{head}"
    );
    let (code, _, body) = get(&m, "/metrics?format=text");
    assert_eq!(code, 200);
    check_exposition(&body);
    // The front door is unaffected.
    assert_eq!(d.client().query("tls_policy", "bank.example"), "OK encrypt");
}

#[test]
fn metrics_listener_pages_heads_and_headers() {
    let (_d, m) = start();
    // The index names the two pages.
    let (code, head, body) = get(&m, "/");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("Content-Type: text/plain; charset=utf-8"),
        "{head}"
    );
    assert_eq!(body, "tls-policyd: /metrics (Prometheus), /health (JSON)\n");
    // Every answer: not cached, one request per connection, its length.
    for path in ["/", "/metrics", "/health", "/nope"] {
        let (_, head, body) = get(&m, path);
        assert!(
            head.contains("\r\nCache-Control: no-store"),
            "{path}: {head}"
        );
        assert!(head.contains("\r\nConnection: close"), "{path}: {head}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{path}: {head}"
        );
    }
    // HEAD: the headers of GET, no body.
    let (code, head, body) = http(&m, b"HEAD /health HTTP/1.1\r\n\r\n");
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    assert!(
        body.is_empty() && !head.contains("Content-Length: 0"),
        "{head}"
    );
    let (code, head, body) = http(&m, b"HEAD /nope HTTP/1.1\r\n\r\n");
    assert_eq!(code, 404, "{head}");
    assert!(
        body.is_empty() && head.contains("Content-Length: 10"),
        "{head}"
    );
    // 405 says what is allowed.
    let (code, head, body) = http(&m, b"DELETE /health HTTP/1.1\r\n\r\n");
    assert_eq!(code, 405, "{head}");
    assert!(head.contains("\r\nAllow: GET, HEAD"), "{head}");
    assert_eq!(body, b"only GET and HEAD\n");
    // HTTP/1.0 clients, and a query string.
    let (code, head, body) = http(&m, b"GET /health?x=1 HTTP/1.0\r\n\r\n");
    assert_eq!(code, 200, "{head}");
    let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(h["status"], "ok");
}

/// A request head that does not arrive in time gets a 408; one longer
/// than the limit a 431, however it is sent.
#[test]
fn metrics_listener_bounds_slow_and_long_requests() {
    let (_d, m) = start();
    let started = std::time::Instant::now();
    let (code, head, body) = http(&m, b"GET /metrics HTTP/1.1\r\n");
    assert_eq!(code, 408, "{head}");
    assert_eq!(body, b"request timeout\n");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(4) && waited < WAIT,
        "{waited:?}"
    );
    // Many short header lines: the size counts, not the number of lines.
    let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for _ in 0..1000 {
        many.extend_from_slice(b"X-A: b\r\n");
    }
    many.extend_from_slice(b"\r\n");
    let (code, head, _) = http(&m, &many);
    assert_eq!(code, 200, "{head}");
    // No end of head at all.
    let (code, head, _) = http(&m, &[b'a'; 20_000]);
    assert_eq!(code, 431, "{head}");
}

fn tls_policyd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tls-policyd"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TLS_POLICYD_") || k == "RUST_LOG" {
            c.env_remove(&k);
        }
    }
    c
}

fn status(args: &[&str]) -> (i32, String, String) {
    let out = run_with_timeout(tls_policyd().arg("status").args(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `status --address` for a daemon's metrics listener (its config says
/// port 0, so `--config` cannot name the port; the unix socket test uses
/// `--config`).
fn status_of(m: &str) -> (i32, String, String) {
    status(&["--address", m])
}

#[test]
fn health_and_status_show_listeners_reloads_and_errors() {
    let (d, m) = start();
    let sm = d.address().to_string();
    let (code, out, err) = status_of(&m);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("tls-policyd 0.1.0 (pid "), "{out}");
    assert!(out.contains("): ok\n"), "{out}");
    assert!(
        out.contains(&format!(
            "listeners     socketmap  {sm} (0 open connections, 0 lookups)\n"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("metrics    {m}\n")), "{out}");
    assert!(
        out.contains(&format!(
            "policy        {}: 1 rule, loaded ",
            d.policy_path().display()
        )),
        "{out}"
    );
    assert!(out.contains("reloads       0 ok, 0 failed\n"), "{out}");
    assert!(out.contains("recent errors none\n"), "{out}");

    // Traffic, a framing error, then a reload with a broken policy file.
    let mut c = d.client();
    assert_eq!(c.query("tls_policy", "bank.example"), "OK encrypt");
    let mut bad = d.client();
    bad.send_raw(b"x:").unwrap();
    assert!(bad.is_closed());
    d.write_policy(
        "default = \"opportunistic\"\n[[rule]]\ndomains = [\"a.example\"]\ntls = \"sometimes\"\n",
    );
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    d.wait_for_line_since(mark, |l| l.contains("reload failed"));
    let (code, out, err) = status_of(&m);
    assert_eq!(code, 2, "a failed reload is degraded: {out}{err}");
    assert!(out.contains("): degraded\n"), "{out}");
    assert!(out.contains("(1 open connection, 1 lookup)"), "{out}");
    assert!(
        out.contains("reloads       0 ok, 1 failed; last at "),
        "{out}"
    );
    assert!(
        out.contains("FAILED, the previous configuration keeps serving: ")
            && out.contains("sometimes"),
        "{out}"
    );
    assert!(
        out.contains("recent warnings and errors, oldest first:\n"),
        "{out}"
    );
    assert!(
        out.contains("WARN  tls_policyd::frontends::socketmap: socketmap framing error"),
        "{out}"
    );
    assert!(out.contains("ERROR tls_policyd: reload failed"), "{out}");
    // The old policy keeps serving.
    assert_eq!(c.query("tls_policy", "bank.example"), "OK encrypt");

    // /health is the same report as JSON.
    let (code, head, body) = get(&m, "/health");
    assert_eq!(code, 200);
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["pid"], d.pid());
    assert_eq!(h["listeners"][0]["name"], "socketmap");
    assert_eq!(h["listeners"][0]["lookups"], 2);
    assert_eq!(h["reloads"]["failed"], 1);
    assert_eq!(h["reloads"]["last"]["ok"], false);
    let (code, out, _) = status(&["--address", &m, "--json"]);
    assert_eq!(code, 2);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["reloads"], h["reloads"]);

    // Fixed: healthy again.
    d.write_policy(POLICY);
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    d.wait_for_line_since(mark, |l| l.contains("reloaded"));
    let (code, out, _) = status_of(&m);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reloads       1 ok, 1 failed; last at ") && out.contains(": ok\n"),
        "{out}"
    );
    let t = scrape(&m);
    assert_eq!(
        series(&t, "tls_policyd_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        series(&t, "tls_policyd_reloads_total{result=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(series(&t, "tls_policyd_last_reload_success"), Some(1.0));
}

#[test]
fn status_says_why_it_has_no_report() {
    // Nobody listening: connection refused, exit 1.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let (code, out, err) = status(&["--address", &format!("inet:127.0.0.1:{port}")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(&format!("cannot connect to inet:127.0.0.1:{port}"))
            && err.contains("is tls-policyd running?"),
        "{err}"
    );
    // A config without [metrics].
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config("policy")).unwrap();
    let (code, _, err) = status(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("has no [metrics] section"), "{err}");
    // Something that does not speak HTTP.
    let not_http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = not_http.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = not_http.accept().unwrap();
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "request cut short");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"GET /health HTTP/1.1\r\n"));
        let _ = s.write_all(b"220 mail.example ESMTP\r\n\r\n");
    });
    let (code, _, err) = status(&["--address", &format!("inet:127.0.0.1:{port}")]);
    t.join().unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("malformed response"), "{err}");
    let (code, _, err) = status(&["--address", "localhost:9466"]);
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("inet:ADDRESS:PORT"), "{err}");
}

#[test]
fn metrics_on_a_unix_socket_for_status() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("metrics.sock");
    let cfg = format!(
        "{}\n[metrics]\nlisten = \"unix:{}\"\n",
        config("policy"),
        sock.display()
    );
    let d = Daemon::start(&cfg, POLICY);
    assert_eq!(d.listening("metrics"), format!("unix:{}", sock.display()));
    let (code, out, err) = status(&["--config", d.config_path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("metrics    unix:{}\n", sock.display())),
        "{out}"
    );
}

/// Receive one datagram or panic after [`WAIT`].
fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {WAIT:?}: {e}"));
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn notify_socket(dir: &Path) -> UnixDatagram {
    let s = UnixDatagram::bind(dir.join("notify")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

#[test]
fn notify_socket_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock = notify_socket(dir.path());
    let mut d = Daemon::spawn(
        &config("policy"),
        POLICY,
        Options {
            env: vec![(
                "NOTIFY_SOCKET".into(),
                dir.path().join("notify").display().to_string(),
            )],
            ..Default::default()
        },
    );
    let ready = recv(&sock);
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving socketmap on inet:127.0.0.1:"),
        "{ready}"
    );
    // READY comes after the listener is bound: it answers at once.
    let addr = ready.rsplit_once(" on ").unwrap().1;
    let mut c = common::Client::connect(port_of(addr));
    assert_eq!(c.query("tls_policy", "bank.example"), "OK encrypt");

    d.signal(libc::SIGHUP);
    let r = recv(&sock);
    assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{r}");
    assert_eq!(recv(&sock), "READY=1\nSTATUS=serving; reloaded, 1 rules");

    d.write_policy("default = \"bogus\"\n");
    d.signal(libc::SIGHUP);
    assert!(recv(&sock).starts_with("RELOADING=1\n"));
    assert_eq!(
        recv(&sock),
        "READY=1\nSTATUS=serving the previous configuration; the last reload failed"
    );

    d.signal(libc::SIGTERM);
    assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=stopping");
    assert!(d.wait_exit().success());
}

#[test]
fn notify_socket_that_cannot_be_used_is_a_warning() {
    let d = Daemon::start_with(
        &config("policy"),
        POLICY,
        Options {
            env: vec![("NOTIFY_SOCKET".into(), "relative/notify".into())],
            ..Default::default()
        },
    );
    assert!(
        d.find_line(|l| l.contains("WARN") && l.contains("readiness notification is off"))
            .is_some(),
        "{}",
        d.stderr_text()
    );
    assert_eq!(d.client().query("tls_policy", "bank.example"), "OK encrypt");
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker, packaged) in [
        ("bash", "complete -F _tls__policyd", "tls-policyd.bash"),
        ("zsh", "#compdef tls-policyd", "_tls-policyd"),
        ("fish", "complete -c tls-policyd", "tls-policyd.fish"),
    ] {
        let out = run_with_timeout(tls_policyd().args(["completions", shell]));
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        // The package ships these files: they must match the binary.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging/completions")
            .join(packaged);
        assert!(
            std::fs::read_to_string(&path).unwrap() == text,
            "{} is stale: tls-policyd completions {shell} > {}",
            path.display(),
            path.display()
        );
        assert!(text.contains(marker), "{shell}: {text}");
        for sub in [
            "serve",
            "check-config",
            "explain",
            "log",
            "report",
            "status",
        ] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    // The bash script is valid bash.
    let out = run_with_timeout(tls_policyd().args(["completions", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.bash");
    std::fs::write(&f, &out.stdout).unwrap();
    let check = run_with_timeout(Command::new("bash").arg("-n").arg(&f));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let out = run_with_timeout(tls_policyd().args(["completions", "tcsh"]));
    assert!(!out.status.success());
}

fn packaged_completion(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/completions")
        .join(name)
}

fn lines_of(out: &std::process::Output, what: &str) -> Vec<String> {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The candidates the packaged bash completion offers for `line` (words
/// separated by single spaces; the last, possibly empty, is completed), as
/// bash's programmable completion calls it: COMP_WORDS, COMP_CWORD, and
/// the function `complete -p` names, with the command, the word and the
/// previous word.
fn bash_candidates(line: &str, cwd: &Path) -> Vec<String> {
    let script = r#"
        source "$1"
        line="$2"
        read -r -a COMP_WORDS <<<"$line"
        [[ "$line" == *" " ]] && COMP_WORDS+=("")
        COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
        COMP_LINE="$line"
        COMP_POINT=${#line}
        spec=$(complete -p tls-policyd)
        fn=$(sed -n 's/.* -F \([^ ]*\) .*/\1/p' <<<"$spec")
        "$fn" tls-policyd "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = run_with_timeout(
        Command::new("bash")
            .args(["--norc", "--noprofile", "-c", script, "bash"])
            .arg(packaged_completion("tls-policyd.bash"))
            .arg(line)
            .current_dir(cwd),
    );
    lines_of(&out, &format!("bash: {line}"))
}

/// The candidates fish offers for `line` with the packaged completion.
fn fish_candidates(fish: &Path, line: &str, cwd: &Path) -> Vec<String> {
    let out = run_with_timeout(
        Command::new(fish)
            .args(["--no-config", "-c", "source $argv[1]; complete -C $argv[2]"])
            .arg(packaged_completion("tls-policyd.fish"))
            .arg(line)
            .current_dir(cwd),
    );
    lines_of(&out, &format!("fish: {line}"))
}

/// The candidates an interactive zsh (compinit, TAB) offers for `line`
/// with the packaged completion (tests/fixtures/zsh-complete.zsh).
fn zsh_candidates(zsh: &Path, line: &str, cwd: &Path) -> Vec<String> {
    let fpath = tempfile::tempdir().unwrap();
    std::fs::copy(
        packaged_completion("_tls-policyd"),
        fpath.path().join("_tls-policyd"),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zsh-complete.zsh");
    let out = run_with_timeout(
        Command::new(zsh)
            .arg("-f")
            .arg(script)
            .arg(fpath.path())
            .arg(line)
            .current_dir(cwd),
    );
    lines_of(&out, &format!("zsh: {line}"))
}

fn assert_candidates(shell: &str, line: &str, got: &[String], want: &[&str], not: &[&str]) {
    for w in want {
        assert!(
            got.iter().any(|g| g == w),
            "{shell}: `{line}` does not offer {w}: {got:?}"
        );
    }
    for n in not {
        assert!(
            !got.iter().any(|g| g == n),
            "{shell}: `{line}` offers {n}: {got:?}"
        );
    }
}

/// Completion past the first word, in each shell the package ships a
/// script for: subcommands' options, option values, files for --config.
#[test]
fn completion_completes_options_and_values_of_subcommands() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("mine.toml"), "").unwrap();
    let serve_opts: &[&str] = &["--config", "--help"];
    let log_opts: &[&str] = &[
        "--file",
        "--config",
        "--domain",
        "--queue-id",
        "--since",
        "--tls",
        "--outcomes",
        "--verdict",
        "--summary",
        "--json",
        "--help",
    ];
    let report_opts: &[&str] = &[
        "--log", "--config", "--since", "--until", "--domain", "--json", "--html", "--help",
    ];
    let cases: [(&str, &[&str], &[&str]); 8] = [
        ("tls-policyd serve -", serve_opts, &["--json", "--summary"]),
        ("tls-policyd log --", log_opts, &["--address"]),
        (
            "tls-policyd report --",
            report_opts,
            &["--file", "--verdict"],
        ),
        (
            "tls-policyd status --",
            &["--config", "--address", "--json"],
            &["--summary"],
        ),
        ("tls-policyd log --tls ", &["forced", "opportunistic"], &[]),
        (
            "tls-policyd log --verdict ",
            &["held", "plaintext-fallback", "not-delivered"],
            &["forced"],
        ),
        (
            "tls-policyd completions ",
            &["bash", "zsh", "fish"],
            &["--summary"],
        ),
        ("tls-policyd check-config --config ", &["mine.toml"], &[]),
    ];
    let mut shells = vec!["bash"];
    let zsh = common::find_tool("zsh");
    let fish = common::find_tool("fish");
    for (name, tool) in [("zsh", &zsh), ("fish", &fish)] {
        match tool {
            Some(_) => shells.push(name),
            None => eprintln!("{name} is not installed (scripts/test-all installs it): not tested"),
        }
    }
    for shell in shells {
        for (line, want, not) in cases {
            let got = match shell {
                "bash" => bash_candidates(line, cwd.path()),
                "zsh" => zsh_candidates(zsh.as_deref().unwrap(), line, cwd.path()),
                _ => fish_candidates(fish.as_deref().unwrap(), line, cwd.path()),
            };
            assert_candidates(shell, line, &got, want, not);
        }
    }
}

/// One policy delegation request; the action line of the reply.
fn policy_ask(s: &mut TcpStream, state: &str, recipient: &str) -> String {
    let req = policy_request(state, "alice@src.example", recipient, "i1", "");
    s.write_all(req.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "reply cut short");
        reply.push(byte[0]);
    }
    String::from_utf8(reply).unwrap().trim_end().to_string()
}

#[test]
fn metrics_count_policy_server_requests_decisions_and_prober_cache() {
    let cfg = format!(
        "{}\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n",
        front_door_config("policy_server", "")
    );
    let d = Daemon::start_frontend(&cfg, POLICY, Options::default(), "policy");
    let m = d.listening("metrics");
    let mut s = TcpStream::connect(("127.0.0.1", port_of(d.address()))).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        policy_ask(&mut s, "RCPT", "bob@bank.example"),
        "action=DUNNO"
    );
    assert_eq!(
        policy_ask(&mut s, "RCPT", "carol@other.example"),
        "action=DUNNO"
    );
    assert_eq!(policy_ask(&mut s, "END-OF-MESSAGE", ""), "action=DUNNO");
    let t = scrape(&m);
    let v = |x: &str| series(&t, x);
    assert_eq!(
        v("tls_policyd_lookups_total{frontend=\"policy\"}"),
        Some(3.0)
    );
    assert_eq!(
        v("tls_policyd_lookups_total{frontend=\"socketmap\"}"),
        Some(0.0)
    );
    assert_eq!(
        v(
            "tls_policyd_decisions_total{frontend=\"policy\",tls=\"forced\",level=\"encrypt\",source=\"static\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "tls_policyd_decisions_total{frontend=\"policy\",tls=\"opportunistic\",level=\"may\",source=\"default\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        v("tls_policyd_connections_open{frontend=\"policy\"}"),
        Some(1.0)
    );
    // The forced recipient asked the prober's cache, which knew nothing.
    assert_eq!(
        v("tls_policyd_cache_requests_total{cache=\"prober\",result=\"miss\"}"),
        Some(1.0)
    );
    assert_eq!(v("tls_policyd_cache_entries{cache=\"prober\"}"), Some(0.0));
    // A malformed request is counted and closes that connection only.
    let mut bad = TcpStream::connect(("127.0.0.1", port_of(d.address()))).unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    bad.write_all(b"no equals sign here\n\n").unwrap();
    let mut rest = Vec::new();
    bad.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let t = scrape(&m);
    assert_eq!(
        series(
            &t,
            "tls_policyd_errors_total{component=\"policy\",kind=\"malformed_request\"}"
        ),
        Some(1.0),
        "{t}"
    );
    let (code, out, _) = status_of(&m);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("listeners     policy "), "{out}");
    assert!(out.contains("caches        prober: 0 entries\n"), "{out}");
}

#[test]
fn malformed_keys_naming_a_ruled_domain_are_counted() {
    let (d, m) = start();
    let mut c = d.client();
    assert_eq!(c.query("tls_policy", "bank.example:65536"), "OK encrypt");
    assert_eq!(c.query("tls_policy", "[bank.example"), "OK encrypt");
    // No rule could be meant: the default, not counted.
    assert_eq!(c.query("tls_policy", "other.example:65536"), "OK may");
    let t = scrape(&m);
    assert_eq!(
        series(
            &t,
            "tls_policyd_errors_total{component=\"socketmap\",kind=\"malformed_key\"}"
        ),
        Some(2.0),
        "{t}"
    );
}
