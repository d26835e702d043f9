//! What Postfix's smtp(8) logs for one delivery, in Postfix 3.7's own
//! words (`tests/fixtures/postfix-logs/`), for the tests of the outcome
//! follower: the messages alone (a journal entry's `MESSAGE`), or as the
//! lines of a mail log stamped now.
//!
//! The relay is `mx.DOMAIN[127.0.0.11]:25` for the recipient's domain.

/// The recipient's domain.
fn domain_of(to: &str) -> &str {
    to.rsplit_once('@').map_or(to, |(_, d)| d)
}

/// `mx.DOMAIN[127.0.0.11]:25` for the recipient `to`.
fn relay(to: &str) -> String {
    format!("mx.{}[127.0.0.11]:25", domain_of(to))
}

/// The TLS summary of a connection to the recipient's relay; `trust` is
/// Postfix's word: `Verified`, `Trusted`, `Untrusted` or `Anonymous`.
pub fn tls_established(trust: &str, to: &str) -> String {
    format!(
        "{trust} TLS connection established to {}: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 \
         (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest \
         SHA256",
        relay(to)
    )
}

/// The status line of a delivery the relay accepted.
pub fn sent_line(queue_id: &str, to: &str) -> String {
    format!(
        "{queue_id}: to=<{to}>, relay={}, delay=0.2, delays=0.03/0.03/0.06/0.08, dsn=2.0.0, \
         status=sent (250 2.0.0 Ok: queued as 9974198C1B7)",
        relay(to)
    )
}

/// Delivered over TLS of `trust` (see [`tls_established`]).
pub fn sent_over_tls(trust: &str, queue_id: &str, to: &str) -> Vec<String> {
    vec![tls_established(trust, to), sent_line(queue_id, to)]
}

/// Delivered in plaintext (no TLS summary before the status line).
pub fn sent_plaintext(queue_id: &str, to: &str) -> Vec<String> {
    vec![sent_line(queue_id, to)]
}

/// Deferred: the level requires TLS and the relay did not offer STARTTLS.
pub fn not_offered(queue_id: &str, to: &str) -> Vec<String> {
    let relay = relay(to);
    let host = relay.strip_suffix(":25").unwrap_or(&relay);
    vec![format!(
        "{queue_id}: to=<{to}>, relay={relay}, delay=0.04, delays=0.01/0.02/0.01/0, dsn=4.7.4, \
         status=deferred (TLS is required, but was not offered by host {host})"
    )]
}

/// Bounced by the relay over a plaintext connection: not a TLS reason.
pub fn bounced(queue_id: &str, to: &str) -> Vec<String> {
    let relay = relay(to);
    let host = relay.strip_suffix(":25").unwrap_or(&relay);
    vec![format!(
        "{queue_id}: to=<{to}>, relay={relay}, delay=0.07, delays=0.02/0/0.02/0.03, dsn=5.1.1, \
         status=bounced (host {host} said: 550 5.1.1 <{to}>: Recipient address rejected: no \
         such user (in reply to RCPT TO command))"
    )]
}

/// Deferred because Postfix had no usable TLS policy (the policy lookup
/// failed): the warning, then the status line.
pub fn no_policy(queue_id: &str, to: &str) -> Vec<String> {
    let domain = domain_of(to);
    vec![
        format!(
            "warning: TLS policy lookup for {domain}/mx.{domain}: client TLS configuration problem"
        ),
        format!(
            "{queue_id}: to=<{to}>, relay=none, delay=0.01, delays=0/0/0/0, dsn=4.7.5, \
             status=deferred (client TLS configuration problem)"
        ),
    ]
}

/// Now, as rsyslog's RFC 3339 timestamps write it.
pub fn stamp() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// `messages` as mail log lines of `postfix/smtp[pid]` on host `out`,
/// stamped now, each ending in a newline.
pub fn log_lines(pid: u32, messages: &[String]) -> String {
    let now = stamp();
    messages
        .iter()
        .map(|m| format!("{now} out postfix/smtp[{pid}]: {m}\n"))
        .collect()
}

/// Append `text` to the file at `path` (created when missing).
pub fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
