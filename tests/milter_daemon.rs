//! The milter front door of the real binary: configured from `[milter]`,
//! reloaded on SIGHUP, stopped on SIGTERM; caps are logged. The MTA side is
//! the `indymilter-test` client on 127.0.0.1.

mod common;

use std::time::Duration;

use indymilter_test::{Actions, EomAction, MacroStage, Status, TestConnection};

use common::fixtures::POLICY_BANK as POLICY;
use common::milter::accepted;
use common::{Daemon, Options, front_door_config};

fn config(extra: &str) -> String {
    front_door_config(
        "milter",
        &format!("max_recipients = 2\nmax_header_bytes = 1024\n{extra}"),
    )
}

async fn open(d: &Daemon) -> TestConnection {
    let addr = d.address().strip_prefix("inet:").unwrap().to_string();
    TestConnection::configure()
        .read_timeout(Duration::from_secs(10))
        .write_timeout(Duration::from_secs(10))
        .open_tcp(addr)
        .await
        .unwrap()
}

/// One message from connect to end of message; the end-of-message
/// actions.
async fn message(
    conn: &mut TestConnection,
    id: &str,
    recipients: &[&str],
    headers: &[(&str, String)],
) -> Vec<EomAction> {
    conn.connect("client.example", [192, 0, 2, 25])
        .await
        .unwrap();
    conn.helo("client.example").await.unwrap();
    conn.mail(["<alice@src.example>"]).await.unwrap();
    for r in recipients {
        conn.macros(MacroStage::Rcpt, [("i", id)]).await.unwrap();
        assert_eq!(
            accepted(conn.rcpt([format!("<{r}>")]).await.unwrap()),
            Status::Continue
        );
    }
    for (name, value) in headers {
        conn.header(*name, value.as_str()).await.unwrap();
    }
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    actions.actions
}

#[tokio::test]
async fn milter_records_reloads_logs_caps_and_stops() {
    let d = Daemon::start_frontend(&config(""), POLICY, Options::default(), "milter");
    let mut conn = open(&d).await;
    assert_eq!(conn.negotiated_actions(), Actions::empty());
    let actions = message(
        &mut conn,
        "Q1",
        &["a@bank.example", "b@other.example", "c@other.example"],
        &[
            ("X-Fill", "f".repeat(1100)),
            ("Message-ID", "<1@src.example>".into()),
        ],
    )
    .await;
    assert!(actions.is_empty());
    conn.close().await.unwrap();

    let recs = d.wait_for_decisions(1);
    assert_eq!(recs[0]["frontend"], "milter");
    assert_eq!(recs[0]["queue_id"], "Q1");
    assert_eq!(recs[0]["recipients"].as_array().unwrap().len(), 2);
    assert!(recs[0].get("message_id").is_none(), "past the header cap");
    // Each cap is logged, with the queue id.
    let line = d.wait_for_line(|l| l.contains("more recipients than are remembered"));
    assert!(line.contains("Q1") && line.contains("limit=2"), "{line}");
    let line = d.wait_for_line(|l| l.contains("headers exceed the bytes looked at"));
    assert!(line.contains("Q1") && line.contains("limit=1024"), "{line}");

    // SIGHUP: a trace header for connections opened afterwards.
    d.write_config(&config("trace_header = \"X-TLS-Policy\""));
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    d.wait_for_line_since(mark, |l| l.contains("reloaded"));
    let mut conn = open(&d).await;
    assert_eq!(conn.negotiated_actions(), Actions::ADD_HEADER);
    let actions = message(&mut conn, "Q2", &["a@bank.example"], &[]).await;
    assert!(
        actions.iter().any(|a| matches!(a,
            EomAction::InsertHeader { index: 0, name, value }
                if name.to_str() == Ok("X-TLS-Policy")
                    && value.to_str() == Ok("bank.example=forced (encrypt, static rule 1)"))),
        "{actions:?}"
    );
    conn.close().await.unwrap();

    // A broken [milter] keeps the running settings.
    d.write_config(&config("routing_header = \"X Route\""));
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    let line = d.wait_for_line_since(mark, |l| l.contains("reload failed"));
    assert!(line.contains("milter.routing_header"), "{line}");
    let conn = open(&d).await;
    assert_eq!(conn.negotiated_actions(), Actions::ADD_HEADER);
    conn.close().await.unwrap();

    // Listener settings need a restart, and the reload line says so.
    d.write_config(&config("max_connections = 5"));
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    let line = d.wait_for_line_since(mark, |l| l.contains("take effect on restart"));
    assert!(line.contains("milter.max_connections"), "{line}");

    // SIGTERM: the daemon stops cleanly.
    let mut d = d;
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}
