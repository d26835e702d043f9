//! The milter front door over the wire: the milter runs in process on
//! 127.0.0.1 port 0 (or a unix socket) with a real decision log; the MTA
//! side is the `indymilter-test` client, which speaks the milter protocol
//! as Postfix and sendmail do.

mod common;

use std::time::Duration;

use indymilter_test::{
    Actions, EomAction, EomActions, MacroStage, ProtoOpts, Status, TestConnection,
};
use serde_json::Value;

use common::knowledge::{PANIC_DOMAIN, no_starttls};
use common::milter::{MilterServer, SLOW_DOMAIN, accepted};

const POLICY: &str = r#"
default = "opportunistic"

[[rule]]
domains = ["bank.example", ".bank.example"]
tls = "forced"
reason = "PCI partner"

[[rule]]
domains = ["strict.example"]
tls = "forced"
refuse = "reject"

[[rule]]
domains = ["lenient.example"]
tls = "forced"
refuse = "off"

[[rule]]
domains = ["relaxable.example"]
tls = "forced"
allow_tls_required_no = true

[[rule]]
domains = ["verify.example"]
tls = "verify"

[[sender_rule]]
senders = ["ceo@example.com"]
tls = "forced"
reason = "board mail"
"#;

const TIMEOUT: Duration = Duration::from_secs(10);

fn start(settings: &str) -> MilterServer {
    MilterServer::start("inet:127.0.0.1:0", settings, POLICY)
}

async fn open(m: &MilterServer) -> TestConnection {
    TestConnection::configure()
        .read_timeout(TIMEOUT)
        .write_timeout(TIMEOUT)
        .open_tcp(m.socket_addr())
        .await
        .expect("milter connection")
}

/// CONNECT and HELO as Postfix sends them after STARTTLS: the connect
/// macros, then the TLS macros with HELO.
async fn greet(conn: &mut TestConnection) {
    conn.macros(
        MacroStage::Connect,
        [("j", "mx.test.example"), ("{daemon_name}", "smtpd")],
    )
    .await
    .unwrap();
    let s = conn
        .connect("client.example", [192, 0, 2, 25])
        .await
        .unwrap();
    assert_eq!(accepted(s), Status::Continue);
    conn.macros(
        MacroStage::Helo,
        [
            ("{tls_version}", "TLSv1.3"),
            ("{cipher}", "TLS_AES_256_GCM_SHA384"),
            ("{cipher_bits}", "256"),
            ("{cert_subject}", "CN=client.example"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        accepted(conn.helo("client.example").await.unwrap()),
        Status::Continue
    );
}

async fn mail(conn: &mut TestConnection, sender: &str) {
    conn.macros(
        MacroStage::Mail,
        [("{mail_addr}", sender), ("{auth_authen}", "")],
    )
    .await
    .unwrap();
    let s = conn.mail([format!("<{sender}>")]).await.unwrap();
    assert_eq!(accepted(s), Status::Continue);
}

async fn rcpt(conn: &mut TestConnection, queue_id: &str, recipient: &str) -> Status {
    conn.macros(
        MacroStage::Rcpt,
        [("i", queue_id), ("{rcpt_addr}", recipient)],
    )
    .await
    .unwrap();
    accepted(conn.rcpt([format!("<{recipient}>")]).await.unwrap())
}

async fn eom(conn: &mut TestConnection, queue_id: &str) -> EomActions {
    conn.macros(MacroStage::Eom, [("i", queue_id)])
        .await
        .unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    actions
}

fn reply_text(s: &Status) -> String {
    match s {
        Status::Tempfail { message: Some(m) } | Status::Reject { message: Some(m) } => {
            m.to_string_lossy().into_owned()
        }
        other => panic!("not a refusal with a reply: {other:?}"),
    }
}

fn inserted_headers(a: &EomActions) -> Vec<(i32, String, String)> {
    a.actions
        .iter()
        .filter_map(|x| match x {
            EomAction::InsertHeader { index, name, value } => Some((
                *index,
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )),
            _ => None,
        })
        .collect()
}

fn recipients(rec: &Value) -> Vec<(String, String, String)> {
    rec["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["recipient"].as_str().unwrap().to_string(),
                r["tls"].as_str().unwrap().to_string(),
                r["level"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn negotiates_no_actions_by_default_and_exactly_the_macros_it_uses() {
    let m = start("");
    let conn = open(&m).await;
    // The client offers every action; with everything off, none is taken.
    assert_eq!(conn.negotiated_actions(), Actions::empty());
    // Stages the milter has no use for are skipped by the MTA.
    let opts = conn.negotiated_opts();
    for skipped in [ProtoOpts::NO_BODY, ProtoOpts::NO_EOH, ProtoOpts::NO_UNKNOWN] {
        assert!(opts.contains(skipped), "{skipped:?} in {opts:?}");
    }
    // DATA is taken and answered: Postfix sends its macros anyway, and an
    // unanswered packet would wait for the delayed ACK.
    for used in [
        ProtoOpts::NO_CONNECT,
        ProtoOpts::NO_HELO,
        ProtoOpts::NO_MAIL,
        ProtoOpts::NO_RCPT,
        ProtoOpts::NO_DATA,
        ProtoOpts::NO_HEADER,
    ] {
        assert!(!opts.contains(used), "{used:?} in {opts:?}");
    }
    // Steps that never change anything are not waited for; with refusals
    // off, neither is RCPT. DATA and the end of message are answered.
    for noreply in [
        ProtoOpts::NOREPLY_CONNECT,
        ProtoOpts::NOREPLY_HELO,
        ProtoOpts::NOREPLY_MAIL,
        ProtoOpts::NOREPLY_RCPT,
        ProtoOpts::NOREPLY_HEADER,
    ] {
        assert!(opts.contains(noreply), "{noreply:?} in {opts:?}");
    }
    assert!(!opts.contains(ProtoOpts::NOREPLY_DATA), "{opts:?}");
    let macros = conn.requested_macros();
    let get = |s: MacroStage| macros.get(&s).map(|c| c.to_string_lossy().into_owned());
    assert_eq!(get(MacroStage::Connect).as_deref(), Some("j {daemon_name}"));
    assert_eq!(
        get(MacroStage::Helo).as_deref(),
        Some("{tls_version} {cipher} {cipher_bits} {cert_subject}")
    );
    assert_eq!(
        get(MacroStage::Mail).as_deref(),
        Some("i {auth_authen} {mail_addr}")
    );
    assert_eq!(get(MacroStage::Rcpt).as_deref(), Some("i {rcpt_addr}"));
    assert_eq!(get(MacroStage::Eom).as_deref(), Some("i"));
    assert_eq!(macros.len(), 5, "{macros:?}");
    conn.close().await.unwrap();

    let m = start("trace_header = \"X-TLS-Policy\"\nquarantine = true\nrefuse = \"defer\"\n");
    let conn = open(&m).await;
    assert_eq!(
        conn.negotiated_actions(),
        Actions::ADD_HEADER | Actions::QUARANTINE
    );
    // Refusing needs the RCPT reply.
    let opts = conn.negotiated_opts();
    assert!(!opts.contains(ProtoOpts::NOREPLY_RCPT), "{opts:?}");
    assert!(opts.contains(ProtoOpts::NOREPLY_MAIL), "{opts:?}");
    conn.close().await.unwrap();
    let m = start("routing_header = \"X-TLS-Route\"\n");
    let conn = open(&m).await;
    assert_eq!(conn.negotiated_actions(), Actions::ADD_HEADER);
    conn.close().await.unwrap();

    // An MTA that does not offer quarantine: only what it offers.
    let m = start("trace_header = \"X-TLS-Policy\"\nquarantine = true\n");
    let conn = TestConnection::configure()
        .available_actions(Actions::ADD_HEADER | Actions::CHANGE_HEADER)
        .open_tcp(m.socket_addr())
        .await
        .unwrap();
    assert_eq!(conn.negotiated_actions(), Actions::ADD_HEADER);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn every_stage_feeds_one_record_per_message() {
    let m = start("");
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    conn.macros(
        MacroStage::Mail,
        [
            ("{mail_addr}", "alice@src.example"),
            ("{auth_authen}", "alice"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        accepted(
            conn.mail(["<alice@src.example>", "SIZE=100"])
                .await
                .unwrap()
        ),
        Status::Continue
    );
    assert_eq!(
        rcpt(&mut conn, "", "a@bank.example").await,
        Status::Continue
    );
    assert_eq!(
        rcpt(&mut conn, "4QX1", "b@Other.Example").await,
        Status::Continue
    );
    for (name, value) in [
        ("From", "alice@src.example"),
        ("Message-ID", "<m1@src.example>"),
        ("TLS-Required", "No"),
        ("Subject", "hello"),
    ] {
        assert_eq!(
            accepted(conn.header(name, value).await.unwrap()),
            Status::Continue
        );
    }
    let actions = eom(&mut conn, "4QX1").await;
    assert!(actions.actions.is_empty(), "{actions:?}");
    conn.close().await.unwrap();

    let recs = m.records();
    assert_eq!(recs.len(), 1, "one record per message, none per RCPT");
    let r = &recs[0];
    assert_eq!(r["frontend"], "milter");
    assert_eq!(r["queue_id"], "4QX1");
    assert_eq!(r["sender"], "alice@src.example");
    assert_eq!(r["client_address"], "192.0.2.25");
    assert_eq!(r["client_name"], "client.example");
    assert_eq!(r["helo_name"], "client.example");
    assert_eq!(r["mta"], "mx.test.example");
    assert_eq!(r["daemon_name"], "smtpd");
    assert_eq!(r["inbound_tls"]["version"], "TLSv1.3");
    assert_eq!(r["inbound_tls"]["cipher"], "TLS_AES_256_GCM_SHA384");
    assert_eq!(r["inbound_tls"]["bits"], 256);
    assert_eq!(r["inbound_tls"]["cert_subject"], "CN=client.example");
    assert_eq!(r["auth_user"], "alice");
    assert_eq!(r["message_id"], "<m1@src.example>");
    assert_eq!(r["tls_required_no"], true);
    assert!(r.get("requiretls").is_none());
    assert_eq!(r["tls"], "forced");
    assert_eq!(r["source"], "static");
    assert_eq!(r["reply"], "CONTINUE");
    assert_eq!(r["action"], "continue");
    assert_eq!(
        r["reason"],
        "message with 2 recipients: 1 forced, 1 opportunistic"
    );
    let list = r["recipients"].as_array().unwrap();
    assert_eq!(list[0]["recipient"], "a@bank.example");
    assert_eq!(list[0]["domain"], "bank.example");
    assert_eq!(list[0]["tls"], "forced");
    assert_eq!(list[0]["level"], "encrypt");
    assert_eq!(list[0]["source"], "static");
    assert_eq!(list[0]["rule"], 1);
    assert_eq!(list[0]["reason"], "PCI partner");
    assert!(list[0].get("action").is_none());
    assert_eq!(list[1]["recipient"], "b@Other.Example");
    assert_eq!(list[1]["domain"], "other.example");
    assert_eq!(list[1]["tls"], "opportunistic");
    assert_eq!(list[1]["level"], "may");
    assert_eq!(list[1]["source"], "default");
    // The knowledge is only asked when something could be refused.
    assert!(m.knowledge.scheduled().is_empty());
}

#[tokio::test]
async fn several_messages_per_connection_with_rset_in_between() {
    let m = start("");
    let mut conn = open(&m).await;
    greet(&mut conn).await;

    mail(&mut conn, "one@src.example").await;
    rcpt(&mut conn, "Q1", "x@bank.example").await;
    conn.header("Message-ID", "<one@src.example>")
        .await
        .unwrap();
    eom(&mut conn, "Q1").await;

    // RSET after RCPT: no message, no record.
    mail(&mut conn, "two@src.example").await;
    rcpt(&mut conn, "Q2", "y@other.example").await;
    conn.abort().await.unwrap();

    // The next message starts clean: no Message-ID carried over.
    mail(&mut conn, "<>").await;
    rcpt(&mut conn, "Q3", "z@other.example").await;
    eom(&mut conn, "Q3").await;
    conn.close().await.unwrap();

    let recs = m.records();
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[0]["queue_id"], "Q1");
    assert_eq!(recs[0]["sender"], "one@src.example");
    assert_eq!(recs[0]["message_id"], "<one@src.example>");
    assert_eq!(
        recipients(&recs[0]),
        [("x@bank.example".into(), "forced".into(), "encrypt".into())]
    );
    assert_eq!(recs[1]["queue_id"], "Q3");
    assert_eq!(recs[1]["sender"], "<>", "as the MTA's {{mail_addr}} says");
    assert!(recs[1].get("message_id").is_none());
    assert_eq!(
        recipients(&recs[1]),
        [(
            "z@other.example".into(),
            "opportunistic".into(),
            "may".into()
        )]
    );
    // Connection facts are kept for every message.
    assert_eq!(recs[1]["client_address"], "192.0.2.25");
    assert_eq!(recs[1]["inbound_tls"]["version"], "TLSv1.3");
}

#[tokio::test]
async fn null_sender_without_macros_and_plaintext_inbound() {
    let m = start("");
    let mut conn = open(&m).await;
    // A milter host that sends no macros at all.
    conn.connect("unknown", [198, 51, 100, 7]).await.unwrap();
    conn.helo("client.example").await.unwrap();
    assert_eq!(accepted(conn.mail(["<>"]).await.unwrap()), Status::Continue);
    assert_eq!(
        accepted(conn.rcpt(["<postmaster@bank.example>"]).await.unwrap()),
        Status::Continue
    );
    let (_, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    conn.close().await.unwrap();
    let r = &m.records()[0];
    assert_eq!(r["sender"], "");
    assert!(r.get("queue_id").is_none());
    assert!(r.get("inbound_tls").is_none(), "plaintext: no TLS object");
    assert!(r.get("auth_user").is_none());
    assert_eq!(r["recipients"][0]["recipient"], "postmaster@bank.example");
}

#[tokio::test]
async fn refusal_defers_a_forced_domain_known_without_starttls() {
    let m = start("refuse = \"defer\"\n");
    m.knowledge.set("bank.example", no_starttls("bank.example"));
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    let s = rcpt(&mut conn, "", "a@bank.example").await;
    let text = reply_text(&s);
    assert!(matches!(s, Status::Tempfail { .. }), "{s:?}");
    assert!(
        text.starts_with(
            "450 4.7.10 TLS policy for bank.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS"
        ),
        "{text}"
    );
    // The next recipient is unaffected; nothing known schedules a probe.
    assert_eq!(
        rcpt(&mut conn, "Q9", "b@other.example").await,
        Status::Continue
    );
    assert_eq!(
        rcpt(&mut conn, "Q9", "c@sub.bank.example").await,
        Status::Continue
    );
    assert_eq!(m.knowledge.scheduled(), ["sub.bank.example"]);
    let actions = eom(&mut conn, "Q9").await;
    assert!(actions.actions.is_empty());
    conn.close().await.unwrap();

    let r = &m.records()[0];
    let list = r["recipients"].as_array().unwrap();
    assert_eq!(list.len(), 3, "refused recipients are listed too");
    assert_eq!(
        list[0]["action"].as_str().unwrap(),
        text,
        "the reply given is recorded"
    );
    assert!(list[1].get("action").is_none());
}

#[tokio::test]
async fn local_submissions_are_never_refused() {
    // Postfix's non_smtpd_milters: sendmail(1) mail shows up as a
    // connection from 127.0.0.1 port 0.
    let m = start("refuse = \"defer\"\n");
    m.knowledge.set("bank.example", no_starttls("bank.example"));
    let mut conn = open(&m).await;
    conn.connect("localhost", ([127, 0, 0, 1], 0))
        .await
        .unwrap();
    conn.helo("localhost").await.unwrap();
    mail(&mut conn, "root@src.example").await;
    assert_eq!(
        rcpt(&mut conn, "L1", "a@bank.example").await,
        Status::Continue
    );
    eom(&mut conn, "L1").await;
    conn.close().await.unwrap();
    // An SMTP client on loopback has a port: refused as usual.
    let mut conn = open(&m).await;
    conn.connect("localhost", ([127, 0, 0, 1], 41234))
        .await
        .unwrap();
    conn.helo("localhost").await.unwrap();
    mail(&mut conn, "root@src.example").await;
    let s = rcpt(&mut conn, "L2", "a@bank.example").await;
    assert!(matches!(s, Status::Tempfail { .. }), "{s:?}");
    conn.close().await.unwrap();
    let r = &m.records()[0];
    assert_eq!(r["queue_id"], "L1");
    assert!(r["recipients"][0].get("action").is_none(), "{r}");
}

#[tokio::test]
async fn reject_and_per_rule_settings() {
    // Global reject.
    let m = start("refuse = \"reject\"\n");
    m.knowledge.set("bank.example", no_starttls("bank.example"));
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    let s = rcpt(&mut conn, "", "a@bank.example").await;
    assert!(matches!(s, Status::Reject { .. }), "{s:?}");
    assert!(reply_text(&s).starts_with("550 5.7.10 TLS policy for bank.example"));
    conn.close().await.unwrap();

    // Global defer; a rule says reject, another says off.
    let m = start("refuse = \"defer\"\n");
    for d in ["strict.example", "lenient.example"] {
        m.knowledge.set(d, no_starttls(d));
    }
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    let s = rcpt(&mut conn, "", "a@strict.example").await;
    assert!(reply_text(&s).starts_with("550 5.7.10 "), "{s:?}");
    assert_eq!(
        rcpt(&mut conn, "", "a@lenient.example").await,
        Status::Continue
    );
    conn.close().await.unwrap();

    // Refusal off (the default): a rule's `refuse` does not switch it on.
    let m = start("");
    m.knowledge
        .set("strict.example", no_starttls("strict.example"));
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    assert_eq!(
        rcpt(&mut conn, "", "a@strict.example").await,
        Status::Continue
    );
    conn.close().await.unwrap();
}

#[tokio::test]
async fn percent_in_a_refusal_is_doubled_for_the_mta() {
    let m = start("refuse = \"defer\"\n");
    m.knowledge.set(
        "bank.example",
        tls_policyd::engine::refusal::Capability::NoStarttls {
            detail: "100% plaintext".into(),
        },
    );
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    let s = rcpt(&mut conn, "", "a@bank.example").await;
    let text = reply_text(&s);
    assert!(text.contains("(100%% plaintext)"), "{text}");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn an_aborted_message_with_a_refusal_is_still_recorded() {
    let m = start("refuse = \"defer\"\n");
    m.knowledge.set("bank.example", no_starttls("bank.example"));
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    let s = rcpt(&mut conn, "", "a@bank.example").await;
    assert!(matches!(s, Status::Tempfail { .. }));
    conn.abort().await.unwrap();
    // The connection goes on with another message.
    mail(&mut conn, "alice@src.example").await;
    rcpt(&mut conn, "Q2", "b@other.example").await;
    eom(&mut conn, "Q2").await;
    conn.close().await.unwrap();
    let recs = m.records();
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[0]["reply"], "ABORT");
    assert!(
        recs[0]["reason"]
            .as_str()
            .unwrap()
            .ends_with("the transaction was aborted (RSET)"),
        "{}",
        recs[0]["reason"]
    );
    assert!(
        recs[0]["recipients"][0]["action"]
            .as_str()
            .unwrap()
            .starts_with("450 4.7.10 ")
    );
    assert_eq!(recs[1]["queue_id"], "Q2");
}

#[tokio::test]
async fn trace_header_summarises_accepted_recipients() {
    let m = start("trace_header = \"X-TLS-Policy\"\nrefuse = \"defer\"\n");
    m.knowledge
        .set("strict.example", no_starttls("strict.example"));
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    rcpt(&mut conn, "", "a@bank.example").await;
    rcpt(&mut conn, "Q1", "b@strict.example").await;
    rcpt(&mut conn, "Q1", "c@other.example").await;
    let actions = eom(&mut conn, "Q1").await;
    conn.close().await.unwrap();
    assert_eq!(
        inserted_headers(&actions),
        [(
            0,
            "X-TLS-Policy".to_string(),
            "bank.example=forced (encrypt, static rule 1); other.example=opportunistic (may, default)"
                .to_string()
        )]
    );
    let r = &m.records()[0];
    assert_eq!(
        r["action"],
        "add header X-TLS-Policy: bank.example=forced (encrypt, static rule 1); other.example=opportunistic (may, default)"
    );
}

#[tokio::test]
async fn routing_header_forced_for_a_sender_rule() {
    let m = start("routing_header = \"X-TLS-Route\"\n");
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "CEO@Example.com").await;
    rcpt(&mut conn, "Q1", "a@other.example").await;
    let actions = eom(&mut conn, "Q1").await;
    assert_eq!(
        inserted_headers(&actions),
        [(0, "X-TLS-Route".to_string(), "forced".to_string())]
    );
    // Another sender on the same connection: no header.
    mail(&mut conn, "bob@example.com").await;
    rcpt(&mut conn, "Q2", "a@other.example").await;
    let actions = eom(&mut conn, "Q2").await;
    assert!(inserted_headers(&actions).is_empty());
    conn.close().await.unwrap();
    let recs = m.records();
    assert_eq!(recs[0]["sender_rule"], 1);
    assert_eq!(recs[0]["tls"], "forced");
    assert_eq!(recs[0]["recipients"][0]["tls"], "forced", "raised");
    assert!(recs[1].get("sender_rule").is_none());
    assert_eq!(recs[1]["recipients"][0]["tls"], "opportunistic");

    // Without a routing header the sender rule cannot be applied, and the
    // record does not pretend it was.
    let m = start("");
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "ceo@example.com").await;
    rcpt(&mut conn, "Q1", "a@other.example").await;
    eom(&mut conn, "Q1").await;
    conn.close().await.unwrap();
    let r = &m.records()[0];
    assert!(r.get("sender_rule").is_none());
    assert_eq!(r["recipients"][0]["tls"], "opportunistic");
}

#[tokio::test]
async fn tls_required_no_relaxes_only_what_the_policy_file_allows() {
    let m = start("routing_header = \"X-TLS-Route\"\n");
    let mut conn = open(&m).await;
    greet(&mut conn).await;

    // Opportunistic and a rule that allows relaxing: relaxed.
    mail(&mut conn, "alice@src.example").await;
    rcpt(&mut conn, "Q1", "a@other.example").await;
    rcpt(&mut conn, "Q1", "b@relaxable.example").await;
    conn.header("TLS-Required", "no").await.unwrap();
    let actions = eom(&mut conn, "Q1").await;
    assert_eq!(
        inserted_headers(&actions),
        [(0, "X-TLS-Route".to_string(), "relaxed".to_string())]
    );

    // A forced rule without the allowance: not relaxed.
    mail(&mut conn, "alice@src.example").await;
    rcpt(&mut conn, "Q2", "a@other.example").await;
    rcpt(&mut conn, "Q2", "b@bank.example").await;
    conn.header("TLS-Required", "No").await.unwrap();
    let actions = eom(&mut conn, "Q2").await;
    assert!(inserted_headers(&actions).is_empty());

    // REQUIRETLS in MAIL FROM overrides the header.
    conn.macros(MacroStage::Mail, [("{mail_addr}", "alice@src.example")])
        .await
        .unwrap();
    conn.mail(["<alice@src.example>", "REQUIRETLS"])
        .await
        .unwrap();
    rcpt(&mut conn, "Q3", "a@other.example").await;
    conn.header("TLS-Required", "No").await.unwrap();
    let actions = eom(&mut conn, "Q3").await;
    assert!(inserted_headers(&actions).is_empty());
    conn.close().await.unwrap();

    let recs = m.records();
    assert_eq!(recs[0]["tls_required_no"], true);
    assert_eq!(recs[0]["action"], "add header X-TLS-Route: relaxed");
    assert_eq!(recs[1]["tls_required_no"], true);
    assert_eq!(recs[1]["action"], "continue");
    assert_eq!(recs[2]["requiretls"], true);
}

#[tokio::test]
async fn quarantine_holds_a_message_whose_forced_recipient_cannot_be_served() {
    let m = start("quarantine = true\n");
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    // Unknown at RCPT (a probe is scheduled) ...
    assert_eq!(
        rcpt(&mut conn, "Q1", "a@bank.example").await,
        Status::Continue
    );
    // RCPT needs no reply here (refusals are off): wait for the milter to
    // have handled it.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while m.knowledge.scheduled().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(m.knowledge.scheduled(), ["bank.example"]);
    // ... known by end of message.
    m.knowledge.set("bank.example", no_starttls("bank.example"));
    let actions = eom(&mut conn, "Q1").await;
    let reasons: Vec<String> = actions
        .actions
        .iter()
        .filter_map(|a| match a {
            EomAction::Quarantine { reason } => Some(reason.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 1, "{actions:?}");
    assert!(
        reasons[0].starts_with("TLS policy for bank.example requires forced TLS (encrypt)"),
        "{}",
        reasons[0]
    );
    // An opportunistic message is not held.
    mail(&mut conn, "alice@src.example").await;
    rcpt(&mut conn, "Q2", "a@other.example").await;
    let actions = eom(&mut conn, "Q2").await;
    assert!(actions.actions.is_empty(), "{actions:?}");
    conn.close().await.unwrap();
    let recs = m.records();
    assert_eq!(recs[0]["action"], "quarantine");
    assert_eq!(recs[1]["action"], "continue");
}

#[tokio::test]
async fn recipient_cap_keeps_the_first_ones_and_counts_the_rest() {
    let m = start("max_recipients = 2\nrefuse = \"defer\"\n");
    m.knowledge.set("bank.example", no_starttls("bank.example"));
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    for r in ["a@other.example", "b@other.example", "c@other.example"] {
        assert_eq!(rcpt(&mut conn, "Q1", r).await, Status::Continue);
    }
    // Past the cap, refusals still work.
    let s = rcpt(&mut conn, "Q1", "d@bank.example").await;
    assert!(matches!(s, Status::Tempfail { .. }), "{s:?}");
    eom(&mut conn, "Q1").await;
    conn.close().await.unwrap();
    let r = &m.records()[0];
    assert_eq!(r["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(
        r["reason"],
        "message with 4 recipients: 0 forced, 2 opportunistic, 2 not listed (over 2)"
    );
}

#[tokio::test]
async fn header_cap_stops_looking_exactly_at_the_limit() {
    let m = start("max_header_bytes = 1024\n");
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    // "X-Fill: " + value + CRLF is 1000 bytes, then the Message-ID header
    // ("Message-ID: <1@x.test>" + CRLF, 24 bytes) ends exactly at 1024.
    mail(&mut conn, "alice@src.example").await;
    rcpt(&mut conn, "Q1", "a@other.example").await;
    conn.header("X-Fill", "f".repeat(990)).await.unwrap();
    conn.header("Message-ID", "<1@x.test>").await.unwrap();
    conn.header("TLS-Required", "No").await.unwrap();
    eom(&mut conn, "Q1").await;

    // One byte less room: the Message-ID is past the cap.
    mail(&mut conn, "alice@src.example").await;
    rcpt(&mut conn, "Q2", "a@other.example").await;
    conn.header("X-Fill", "f".repeat(991)).await.unwrap();
    conn.header("Message-ID", "<1@x.test>").await.unwrap();
    eom(&mut conn, "Q2").await;
    conn.close().await.unwrap();
    let recs = m.records();
    assert_eq!(recs[0]["message_id"], "<1@x.test>");
    assert!(
        recs[0].get("tls_required_no").is_none(),
        "a header past the cap is not read"
    );
    assert!(recs[1].get("message_id").is_none());
}

#[tokio::test]
async fn internal_errors_and_slow_lookups_continue_the_message() {
    let m = start("refuse = \"defer\"\nrequest_timeout = \"300ms\"\n");
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    // The knowledge source panics for this domain.
    let s = rcpt(&mut conn, "Q1", &format!("a@{PANIC_DOMAIN}")).await;
    assert_eq!(s, Status::Continue);
    // A policy source that never answers: continue after the timeout.
    let s = rcpt(&mut conn, "Q1", &format!("b@{SLOW_DOMAIN}")).await;
    assert_eq!(s, Status::Continue);
    // The connection and the message carry on.
    assert_eq!(
        rcpt(&mut conn, "Q1", "c@other.example").await,
        Status::Continue
    );
    eom(&mut conn, "Q1").await;
    conn.close().await.unwrap();
    let r = &m.records()[0];
    assert_eq!(r["queue_id"], "Q1");
    let rs: Vec<&str> = r["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["recipient"].as_str().unwrap())
        .collect();
    assert_eq!(rs, ["c@other.example"]);
}

#[tokio::test]
async fn reload_applies_to_connections_opened_afterwards() {
    let m = start("");
    let mut before = open(&m).await;
    m.reconfigure("trace_header = \"X-TLS-Policy\"\n");
    let mut after = open(&m).await;
    assert_eq!(before.negotiated_actions(), Actions::empty());
    assert_eq!(after.negotiated_actions(), Actions::ADD_HEADER);
    for (conn, id) in [(&mut before, "QB"), (&mut after, "QA")] {
        greet(conn).await;
        mail(conn, "alice@src.example").await;
        rcpt(conn, id, "a@other.example").await;
    }
    // The old connection cannot add the header: it was not negotiated.
    let a = eom(&mut before, "QB").await;
    assert!(a.actions.is_empty());
    let a = eom(&mut after, "QA").await;
    assert_eq!(inserted_headers(&a).len(), 1);
    before.close().await.unwrap();
    after.close().await.unwrap();
}

#[tokio::test]
async fn unix_socket_and_concurrent_connections() {
    let m = MilterServer::start("unix:DIR/milter.sock", "", POLICY);
    let path = m.dir().join("milter.sock");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = TestConnection::configure()
                .read_timeout(TIMEOUT)
                .open_unix(&path)
                .await
                .unwrap();
            greet(&mut conn).await;
            let id = format!("U{i}");
            mail(&mut conn, "alice@src.example").await;
            rcpt(&mut conn, &id, &format!("r{i}@bank.example")).await;
            eom(&mut conn, &id).await;
            conn.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut ids: Vec<String> = m
        .records()
        .iter()
        .map(|r| r["queue_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..8).map(|i| format!("U{i}")).collect::<Vec<_>>());
    drop(m);
    assert!(!path.exists(), "socket file removed at shutdown");
}

/// Golden lines: the decision log's exact bytes (field order, presence,
/// escaping) for the milter's message records. `ts` is the only field
/// that varies between runs; it is set to a fixed value.
mod golden {
    use super::*;

    const TS: &str = "2026-01-02T03:04:05.123456Z";

    fn fixed_ts(line: &str) -> String {
        let rest = line
            .strip_prefix("{\"ts\":\"")
            .unwrap_or_else(|| panic!("record does not start with ts: {line}"));
        let end = rest.find('"').unwrap();
        format!("{{\"ts\":\"{TS}\"{}", &rest[end + 1..])
    }

    const MESSAGE_WITH_EVERYTHING: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"milter","queue_id":"4QX1","key":"","tls":"forced","reply":"CONTINUE","source":"static","reason":"message with 4 recipients: 2 forced, 1 opportunistic, 1 not listed (over 3)","sender":"alice@src.example","client_address":"192.0.2.25","recipients":[{"recipient":"a@Other.Example","domain":"other.example","tls":"opportunistic","level":"may","source":"default","reason":"no rule matches; the policy file's default"},{"recipient":"b@bank.example","domain":"bank.example","tls":"forced","level":"encrypt","source":"static","rule":1,"reason":"PCI partner","action":"450 4.7.10 TLS policy for bank.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS (mx1.bank.example[192.0.2.10]: no STARTTLS in EHLO reply); the mail could not be delivered"},{"recipient":"c@lenient.example","domain":"lenient.example","tls":"forced","level":"encrypt","source":"static","rule":3,"reason":"policy file rule 3"}],"action":"quarantine; add header X-TLS-Policy: other.example=opportunistic (may, default); lenient.example=forced (encrypt, static rule 3)","client_name":"client.example","helo_name":"client.example","mta":"mx.test.example","daemon_name":"smtpd","inbound_tls":{"version":"TLSv1.3","cipher":"TLS_AES_256_GCM_SHA384","bits":256,"cert_subject":"CN=client.example"},"auth_user":"alice \"admin\"","message_id":"<m1@src.example>","tls_required_no":true}"#;
    const MESSAGE_SENDER_RULE_REQUIRETLS: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"milter","queue_id":"4QX2","key":"","tls":"forced","reply":"CONTINUE","source":"default","reason":"message with 1 recipient: 1 forced, 0 opportunistic","sender":"ceo@example.com","client_address":"192.0.2.25","recipients":[{"recipient":"x@other.example","domain":"other.example","tls":"forced","level":"encrypt","source":"default","reason":"no rule matches; the policy file's default"}],"action":"add header X-TLS-Route: forced; add header X-TLS-Policy: other.example=forced (encrypt, default); sender rule 1: forced TLS for the whole message","sender_rule":1,"client_name":"client.example","helo_name":"client.example","mta":"mx.test.example","daemon_name":"smtpd","inbound_tls":{"version":"TLSv1.3","cipher":"TLS_AES_256_GCM_SHA384","bits":256,"cert_subject":"CN=client.example"},"requiretls":true}"#;
    const ABORTED_AFTER_REFUSAL: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"milter","key":"","tls":"forced","reply":"ABORT","source":"static","reason":"message with 1 recipient: 1 forced, 0 opportunistic; the transaction was aborted (RSET)","sender":"bob@src.example","client_address":"192.0.2.25","recipients":[{"recipient":"y@bank.example","domain":"bank.example","tls":"forced","level":"encrypt","source":"static","rule":1,"reason":"PCI partner","action":"450 4.7.10 TLS policy for bank.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS (mx1.bank.example[192.0.2.10]: no STARTTLS in EHLO reply); the mail could not be delivered"}],"action":"none: no message","client_name":"client.example","helo_name":"client.example","mta":"mx.test.example","daemon_name":"smtpd","inbound_tls":{"version":"TLSv1.3","cipher":"TLS_AES_256_GCM_SHA384","bits":256,"cert_subject":"CN=client.example"}}"#;
    const PLAINTEXT_NULL_SENDER: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"milter","key":"","tls":"opportunistic","reply":"CONTINUE","source":"default","reason":"message with 1 recipient: 0 forced, 1 opportunistic","sender":"","client_address":"198.51.100.7","recipients":[{"recipient":"postmaster@other.example","domain":"other.example","tls":"opportunistic","level":"may","source":"default","reason":"no rule matches; the policy file's default"}],"action":"add header X-TLS-Policy: other.example=opportunistic (may, default)","client_name":"unknown","helo_name":"client.example"}"#;

    #[tokio::test]
    async fn milter_records_byte_for_byte() {
        let m = start(
            "max_recipients = 3\nrefuse = \"defer\"\nquarantine = true\n\
             trace_header = \"X-TLS-Policy\"\nrouting_header = \"X-TLS-Route\"\n",
        );
        m.knowledge.set("bank.example", no_starttls("bank.example"));
        m.knowledge
            .set("lenient.example", no_starttls("lenient.example"));
        let mut conn = open(&m).await;
        greet(&mut conn).await;
        // Message 1: accepted, refused, quarantined and dropped
        // recipients, the headers looked at, a trace header.
        conn.macros(
            MacroStage::Mail,
            [
                ("{mail_addr}", "alice@src.example"),
                ("{auth_authen}", "alice \"admin\""),
            ],
        )
        .await
        .unwrap();
        conn.mail(["<alice@src.example>", "SIZE=100"])
            .await
            .unwrap();
        rcpt(&mut conn, "", "a@Other.Example").await;
        rcpt(&mut conn, "4QX1", "b@bank.example").await;
        rcpt(&mut conn, "4QX1", "c@lenient.example").await;
        rcpt(&mut conn, "4QX1", "d@fourth.example").await;
        for (name, value) in [("Message-ID", "<m1@src.example>"), ("TLS-Required", "No")] {
            conn.header(name, value).await.unwrap();
        }
        eom(&mut conn, "4QX1").await;
        // Message 2: a sender rule with REQUIRETLS.
        conn.macros(MacroStage::Mail, [("{mail_addr}", "ceo@example.com")])
            .await
            .unwrap();
        conn.mail(["<ceo@example.com>", "REQUIRETLS"])
            .await
            .unwrap();
        rcpt(&mut conn, "4QX2", "x@other.example").await;
        eom(&mut conn, "4QX2").await;
        // Message 3: ends with RSET after a refusal.
        mail(&mut conn, "bob@src.example").await;
        rcpt(&mut conn, "", "y@bank.example").await;
        conn.abort().await.unwrap();
        conn.close().await.unwrap();
        m.wait_for_records(3);
        // Message 4: plaintext, no macros, the null sender.
        let mut conn = open(&m).await;
        conn.connect("unknown", [198, 51, 100, 7]).await.unwrap();
        conn.helo("client.example").await.unwrap();
        conn.mail(["<>"]).await.unwrap();
        conn.rcpt(["<postmaster@other.example>"]).await.unwrap();
        conn.eom().await.unwrap();
        conn.close().await.unwrap();

        m.wait_for_records(4);
        let got: Vec<String> = m.lines().iter().map(|l| fixed_ts(l)).collect();
        let want = [
            MESSAGE_WITH_EVERYTHING,
            MESSAGE_SENDER_RULE_REQUIRETLS,
            ABORTED_AFTER_REFUSAL,
            PLAINTEXT_NULL_SENDER,
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "record {i}");
        }
    }
}

#[tokio::test]
async fn malformed_recipient_domains_keep_their_rule_or_are_tempfailed() {
    let m = start("refuse = \"defer\"\n");
    let mut conn = open(&m).await;
    greet(&mut conn).await;
    mail(&mut conn, "alice@src.example").await;
    // bank.example's rule (encrypt), nothing known: accepted, recorded
    // with the rule.
    assert_eq!(
        rcpt(&mut conn, "Q7", "a@bank.example:65536").await,
        Status::Continue
    );
    // bank.example (encrypt) or verify.example (verify): tempfailed.
    let s = rcpt(&mut conn, "Q7", "b@bank.example\rverify.example").await;
    assert!(matches!(s, Status::Tempfail { .. }), "{s:?}");
    assert_eq!(
        reply_text(&s),
        "450 4.7.10 recipient domain \"bank.example?verify.example\" is not a valid destination and could name domains with different TLS rules; try again later"
    );
    assert_eq!(
        rcpt(&mut conn, "Q7", "c@other.example:65536").await,
        Status::Continue
    );
    let _ = eom(&mut conn, "Q7").await;
    conn.close().await.unwrap();
    let r = &m.records()[0];
    let list = r["recipients"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(
        (list[0]["tls"].as_str(), list[0]["rule"].as_u64()),
        (Some("forced"), Some(1))
    );
    assert!(
        list[1]["action"]
            .as_str()
            .unwrap()
            .starts_with("450 4.7.10 recipient domain")
    );
    assert_eq!(list[2]["source"], "default");
}
