//! Delivery outcome records as the daemon writes them (the fields in its
//! order, absent ones left out), for the tests of `tls-policyd report`.

use serde_json::Value;

/// One delivery record's JSON line. The domain is the recipient's after
/// the `@`; an `undecided` record names no decision.
pub fn delivery(
    ts: &str,
    queue_id: &str,
    recipient: &str,
    status: &str,
    tls_trust: &str,
    verdict: &str,
) -> String {
    let domain = recipient.split_once('@').map(|(_, d)| d);
    let host = format!("mx.{}", domain.unwrap_or("localhost"));
    let dsn = match status {
        "sent" => "2.0.0",
        "bounced" => "5.0.0",
        _ if verdict == "held" => "4.7.5",
        _ => "4.4.1",
    };
    let mut fields: Vec<(&str, Value)> = vec![
        ("ts", ts.into()),
        ("frontend", "delivery".into()),
        ("queue_id", queue_id.into()),
        ("recipient", recipient.into()),
    ];
    if let Some(d) = domain {
        fields.push(("domain", d.into()));
    }
    fields.extend([
        ("relay", format!("{host}[192.0.2.25]:25").into()),
        ("transport", "postfix/smtp".into()),
        ("status", status.into()),
        ("dsn", dsn.into()),
        ("status_text", format!("{dsn} from {host}").into()),
        ("tls_trust", tls_trust.into()),
    ]);
    if tls_trust != "none" {
        fields.push(("tls_protocol", "TLSv1.3".into()));
        fields.push(("tls_cipher", "TLS_AES_256_GCM_SHA384".into()));
    }
    if verdict != "undecided" {
        fields.extend([
            ("decided_by", "socketmap".into()),
            ("tls", "opportunistic".into()),
            ("level", "may".into()),
            ("source", "default".into()),
            ("reason", "no rule matched".into()),
        ]);
    }
    fields.extend([
        ("verdict", verdict.into()),
        ("logged_at", format!("{}Z", &ts[..19]).into()),
        ("delay", 0.5.into()),
    ]);
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// Lines joined, each ending in a newline.
pub fn log_text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}
