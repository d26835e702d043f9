use super::stages::trace_header;
use super::*;
use crate::engine::decision::Tls;
use crate::engine::recipient::tests::rcpt;
use crate::engine::refusal::RefuseMode;
use crate::frontends::message::header_value;

fn config(extra: &str) -> Result<PolicyServerConfig, toml::de::Error> {
    toml::from_str(&format!("listen = \"inet:127.0.0.1:0\"\n{extra}"))
}

#[test]
fn config_defaults_and_validation() {
    let c = config("").unwrap();
    assert_eq!(c.refuse, RefuseMode::Defer);
    assert_eq!(c.forced_transport, "smtp-tls-forced");
    assert_eq!(c.trace_header, None);
    assert_eq!(c.max_connections, 1024);
    assert_eq!(c.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.request_timeout, Duration::from_secs(10));
    assert!(c.validate().is_ok());

    let c = config("refuse = \"reject\"\nforced_transport = \"smtp-tls-forced\"\ntrace_header = \"X-TLS-Policy\"\nidle_timeout = \"1m\"\n").unwrap();
    assert_eq!(c.refuse, RefuseMode::Reject);
    assert!(c.validate().is_ok());
    let s = PolicyServerSettings::from(&c);
    assert_eq!(&*s.forced_transport, "smtp-tls-forced");
    assert_eq!(s.idle_timeout, Duration::from_secs(60));

    assert!(config("refuse = \"later\"\n").is_err());
    assert!(config("listn = \"x\"\n").is_err());
    assert!(config("idle_timeout = \"soon\"\n").is_err());
    for (extra, key) in [
        (
            "forced_transport = \"smtp:[relay]\"\n",
            "policy_server.forced_transport",
        ),
        (
            "forced_transport = \"\"\n",
            "policy_server.forced_transport",
        ),
        (
            "trace_header = \"X-TLS Policy\"\n",
            "policy_server.trace_header",
        ),
        (
            "trace_header = \"X-TLS-Policy:\"\n",
            "policy_server.trace_header",
        ),
        ("max_connections = 0\n", "policy_server.max_connections"),
        ("socket_mode = \"999\"\n", "policy_server.socket_mode"),
        (
            "request_timeout = \"0s\"\n",
            "policy_server.request_timeout",
        ),
    ] {
        let e = config(extra).unwrap().validate().unwrap_err();
        assert_eq!(e.0, key, "{extra}");
    }
}

#[test]
fn trace_header_is_prepend_with_the_bounded_value() {
    // The value's bounds are header_value's (tested in frontends::message).
    let long = "d.example=may ".repeat(200);
    let h = trace_header("X-TLS-Policy", &long).to_string();
    assert_eq!(
        h,
        format!(
            "PREPEND X-TLS-Policy: {}",
            header_value("X-TLS-Policy", &long)
        )
    );
    assert!(h.len() - "PREPEND ".len() <= crate::engine::recipient::MAX_TRACE_HEADER_LEN);
    assert_eq!(
        trace_header("X-T", "a\nb\u{e9}").to_string(),
        "PREPEND X-T: a?b?"
    );
}

#[test]
fn message_state_is_bounded() {
    let m = Messages::default();
    let req = Request::default();
    for i in 0..MAX_RECIPIENTS_PER_MESSAGE + 5 {
        m.add_recipient(
            "i1",
            &req,
            None,
            rcpt(&format!("d{i}.example"), Tls::Opportunistic, "may", None),
        );
    }
    let msg = m.take("i1").unwrap();
    assert_eq!(msg.recipients.len(), MAX_RECIPIENTS_PER_MESSAGE);
    assert_eq!(msg.dropped, 5);
    assert!(m.take("i1").is_none());

    for i in 0..MAX_OPEN_MESSAGES + 3 {
        m.add_recipient(
            &format!("m{i}"),
            &req,
            None,
            rcpt("a.example", Tls::Forced, "encrypt", None),
        );
    }
    assert_eq!(m.len(), MAX_OPEN_MESSAGES);
    // The oldest went first.
    assert!(m.take("m0").is_none());
    assert!(m.take(&format!("m{}", MAX_OPEN_MESSAGES + 2)).is_some());
}

#[test]
fn filter_once_per_message() {
    let m = Messages::default();
    assert!(m.take_filter("i1"));
    assert!(!m.take_filter("i1"));
    assert!(m.take_filter("i2"));
    assert!(m.take_filter(""));
    assert!(m.take_filter(""));
}
