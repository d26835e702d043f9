//! TLS reports (RFC 8460) from the lab's deliveries: the zones publish
//! `_smtp._tls` records (`mailto:` to a mailbox behind the CA-trusted
//! sink, `https:` to the lab's HTTPS server); after an MTA-STS enforce
//! delivery, a no-STARTTLS deferral, a DANE TLSA mismatch and an
//! opportunistic delivery, `tls-policyd tlsrpt send` for the day delivers
//! the reports through Postfix's sendmail and by POST, and they are read
//! back, decompressed and checked against the RFC's JSON and against what
//! Postfix did.

use std::io::Read;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::common::https::Response;
use crate::common::postfix::SENDER;
use crate::lab::*;

/// `tls-policyd tlsrpt ARGS --day DAY --json` in the lab; its JSON and
/// whether it exited 0. `sendmail` is the lab's Postfix instance.
fn tlsrpt(lab: &Lab, args: &[&str], day: &str) -> (Value, bool) {
    let out = crate::common::run_with_timeout(
        tls_policyd(&lab.ns)
            .env("MAIL_CONFIG", lab.pf.config_dir())
            .arg("tlsrpt")
            .arg("-c")
            .arg(lab.daemon.config_path())
            .args(args)
            .args(["--day", day, "--json"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "tlsrpt {args:?}: {e}\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.success())
}

/// The UTC day of now, `YYYY-MM-DD`.
fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_string()
}

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .expect("a gzip report");
    out
}

/// The headers (unfolded) and the gzip part of a report mail.
fn report_mail(data: &[u8]) -> (String, Vec<u8>) {
    let text = String::from_utf8_lossy(data).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").expect("headers and body");
    let part = body
        .split("Content-Type: application/tlsrpt+gzip")
        .nth(1)
        .expect("an application/tlsrpt+gzip part");
    let (_, rest) = part.split_once("\n\n").expect("the part's body");
    let b64: String = rest
        .lines()
        .take_while(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .concat();
    let gz = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64");
    (head.to_string(), gz)
}

/// Every field RFC 8460 section 4 requires, with its type, and the date
/// range of `day`.
fn check_structure(r: &Value, domain: &str, day: &str) {
    assert_eq!(r["organization-name"], "Lab Mail", "{r}");
    assert_eq!(r["contact-info"], "postmaster@src.example", "{r}");
    assert_eq!(r["report-id"], format!("{day}_{domain}@src.example"), "{r}");
    assert_eq!(
        r["date-range"]["start-datetime"],
        format!("{day}T00:00:00Z"),
        "{r}"
    );
    assert_eq!(
        r["date-range"]["end-datetime"],
        format!("{day}T23:59:59Z"),
        "{r}"
    );
    let policies = r["policies"].as_array().expect("policies[]");
    assert!(!policies.is_empty(), "{r}");
    for p in policies {
        let pol = &p["policy"];
        assert!(
            ["sts", "tlsa", "no-policy-found"].contains(&pol["policy-type"].as_str().unwrap()),
            "{r}"
        );
        assert_eq!(pol["policy-domain"], domain, "{r}");
        assert!(
            p["summary"]["total-successful-session-count"].is_u64(),
            "{r}"
        );
        assert!(p["summary"]["total-failure-session-count"].is_u64(), "{r}");
        let failed: u64 = p["failure-details"]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|d| {
                        assert!(d["result-type"].is_string(), "{r}");
                        d["failed-session-count"].as_u64().expect("a count")
                    })
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(
            Some(failed),
            p["summary"]["total-failure-session-count"].as_u64(),
            "{r}"
        );
    }
}

/// The one policy of a report, with its summary.
fn only_policy(r: &Value) -> (&Value, u64, u64) {
    let p = r["policies"].as_array().unwrap();
    assert_eq!(p.len(), 1, "{r}");
    (
        &p[0],
        p[0]["summary"]["total-successful-session-count"]
            .as_u64()
            .unwrap(),
        p[0]["summary"]["total-failure-session-count"]
            .as_u64()
            .unwrap(),
    )
}

/// Wait until `tlsrpt list` shows `want` sessions for each domain.
fn wait_counted(lab: &Lab, day: &str, want: &[(&str, u64)]) -> Value {
    let deadline = Instant::now() + DELIVERY;
    loop {
        let (v, ok) = tlsrpt(lab, &["list"], day);
        assert!(ok, "{v}");
        let got = |d: &str| {
            v["domains"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["domain"] == d)
                .and_then(|x| x["sessions"].as_u64())
        };
        if want.iter().all(|(d, n)| got(d) == Some(*n)) {
            return v;
        }
        assert!(Instant::now() < deadline, "sessions never counted: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn e2e_tls_reports_go_out_once_by_mail_and_https_with_what_postfix_did() {
    let Some(mut lab) = Lab::start("e2e-rpt") else {
        return;
    };
    let day = today();
    let mark = lab.pf.log_mark();
    let id = lab.send(
        SENDER,
        &[
            "a@sts-enforce.test",
            "b@forced-plain.test",
            "c@bad.dane.test",
            "d@opp-tls.test",
            "e@sts-broken.test",
        ],
    );
    for (rcpt, status) in [
        ("a@sts-enforce.test", "sent"),
        ("b@forced-plain.test", "deferred"),
        ("c@bad.dane.test", "deferred"),
        ("d@opp-tls.test", "sent"),
        ("e@sts-broken.test", "sent"),
    ] {
        let line = lab.status(&id, rcpt, mark);
        assert!(line.contains(&format!("status={status}")), "{line}");
        lab.outcome(&id, rcpt, status);
    }
    let counted = [
        ("sts-enforce.test", 1),
        ("forced-plain.test", 1),
        ("bad.dane.test", 1),
        ("opp-tls.test", 1),
        ("sts-broken.test", 1),
    ];
    let before = wait_counted(&lab, &day, &counted);

    // A restart between the deliveries and the sending changes no count.
    let sm = lab.daemon.address().to_string();
    let ps = lab.daemon.listening("policy");
    let mi = lab.daemon.listening("milter");
    lab.daemon
        .write_config(&config(&sm, &ps, &mi, lab.dir.path(), &lab.pf.log_path()));
    lab.daemon.signal(libc::SIGTERM);
    assert!(lab.daemon.wait_exit().success());
    lab.daemon.restart("socketmap");
    lab.daemon
        .wait_for_line(|l| l.contains("outcomes: resuming where reading stopped"));
    let after = wait_counted(&lab, &day, &counted);
    assert_eq!(before["domains"], after["domains"]);

    // A dry run says what would go where, and sends and changes nothing.
    let (dry, ok) = tlsrpt(&lab, &["send", "--dry-run"], &day);
    assert!(ok, "{dry}");
    for d in dry["domains"].as_array().unwrap() {
        assert_eq!(d["result"], "would-send", "{dry}");
        let want = if d["domain"] == "forced-plain.test" {
            RUA_HTTPS2
        } else if d["domain"] == "opp-tls.test" || d["domain"] == "sts-broken.test" {
            RUA_HTTPS
        } else {
            "mailto:tlsrpt@rua.test"
        };
        assert_eq!(
            d["detail"]["destinations"],
            serde_json::json!([want]),
            "{dry}"
        );
    }
    let (list, _) = tlsrpt(&lab, &["list"], &day);
    for d in list["domains"].as_array().unwrap() {
        assert_eq!(d["destinations"], serde_json::json!([]), "{list}");
        assert_eq!(d["report_id"], Value::Null, "{list}");
    }
    assert!(lab.https.posted(RUA_HOST).is_empty());

    // Today's reports, sent at once (partial reports of the day).
    let (sent, ok) = tlsrpt(&lab, &["send"], &day);
    assert!(ok, "{sent}");
    let result = |d: &str| {
        sent["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["domain"] == d)
            .unwrap_or_else(|| panic!("{d} not in {sent}"))
            .clone()
    };
    for (d, _) in counted {
        assert_eq!(result(d)["result"], "reported", "{sent}");
    }

    // By mail: one message per mailto: domain, through Postfix.
    let reports = || -> Vec<_> {
        lab.tls
            .messages()
            .into_iter()
            .filter(|m| m.rcpt_to.iter().any(|r| r == RUA_MAILTO))
            .collect()
    };
    let deadline = Instant::now() + DELIVERY;
    while reports().len() < 2 {
        assert!(Instant::now() < deadline, "report mails never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mails = reports();
    assert_eq!(mails.len(), 2, "report mails");
    let mut by_mail = std::collections::BTreeMap::new();
    for m in &mails {
        assert!(m.tls, "a report mail went in plaintext");
        assert_eq!(m.mail_from, "tlsrpt-noreply@src.example");
        let (head, gz) = report_mail(&m.data);
        let domain = head
            .lines()
            .find_map(|l| l.strip_prefix("TLS-Report-Domain: "))
            .expect("TLS-Report-Domain")
            .to_string();
        assert!(head.contains("TLS-Report-Submitter: src.example"), "{head}");
        assert!(head.contains("TLS-Required: No"), "{head}");
        assert!(
            head.contains("multipart/report; report-type=\"tlsrpt\""),
            "{head}"
        );
        assert!(
            head.contains(&format!(
                "Subject: Report Domain: {domain} Submitter: src.example Report-ID: <{day}_{domain}@src.example>"
            )),
            "{head}"
        );
        let json = gunzip(&gz);
        by_mail.insert(domain, json);
    }
    assert_eq!(
        by_mail.keys().collect::<Vec<_>>(),
        ["bad.dane.test", "sts-enforce.test"]
    );

    // By HTTPS: one POST per https: domain.
    let posts = [lab.https.posted(RUA_HOST), lab.https.posted(RUA_HOST2)].concat();
    assert_eq!(posts.len(), 3, "POSTs");
    let mut by_post = std::collections::BTreeMap::new();
    for p in &posts {
        assert_eq!(p.path, "/v1/tlsrpt");
        assert_eq!(p.content_type, "application/tlsrpt+gzip");
        let json = gunzip(&p.body);
        let v: Value = serde_json::from_str(&json).unwrap();
        let domain = v["policies"][0]["policy"]["policy-domain"]
            .as_str()
            .unwrap()
            .to_string();
        by_post.insert(domain, json);
    }
    assert_eq!(
        by_post.keys().collect::<Vec<_>>(),
        ["forced-plain.test", "opp-tls.test", "sts-broken.test"]
    );

    // Each report against what Postfix did, and byte for byte what
    // `tlsrpt show --json` prints.
    let attempts = |rcpt: &str, status: &str| -> u64 {
        lab.daemon
            .decisions()
            .iter()
            .filter(|r| r["frontend"] == "delivery" && r["recipient"] == rcpt)
            .filter(|r| r["status"] == status)
            .count() as u64
    };
    for (domain, json) in by_mail.iter().chain(by_post.iter()) {
        let r: Value = serde_json::from_str(json).unwrap();
        check_structure(&r, domain, &day);
        let out = crate::common::run_with_timeout(
            tls_policyd(&lab.ns)
                .args(["tlsrpt", "-c"])
                .arg(lab.daemon.config_path())
                .args(["show", domain, "--day", &day, "--json"]),
        );
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{json}\n"));
        let (p, ok, failed) = only_policy(&r);
        let pol = &p["policy"];
        match domain.as_str() {
            "sts-enforce.test" => {
                assert_eq!(pol["policy-type"], "sts", "{r}");
                assert_eq!(
                    pol["policy-string"],
                    serde_json::json!([
                        "version: STSv1",
                        "mode: enforce",
                        "mx: mx-tls.sink.test",
                        "max_age: 86400"
                    ]),
                    "{r}"
                );
                assert_eq!(pol["mx-host"], serde_json::json!(["mx-tls.sink.test"]));
                assert_eq!((ok, failed), (attempts("a@sts-enforce.test", "sent"), 0));
            }
            "forced-plain.test" => {
                assert_eq!(pol["policy-type"], "no-policy-found", "{r}");
                assert_eq!(
                    (ok, failed),
                    (0, attempts("b@forced-plain.test", "deferred"))
                );
                let f = &p["failure-details"][0];
                assert_eq!(f["result-type"], "starttls-not-supported", "{r}");
                assert_eq!(f["receiving-mx-hostname"], PLAIN_MX.0, "{r}");
                assert_eq!(f["receiving-ip"], PLAIN_MX.1, "{r}");
                assert!(
                    f["failure-reason-code"]
                        .as_str()
                        .is_some_and(|t| t.contains("TLS is required, but was not offered")),
                    "{r}"
                );
            }
            "bad.dane.test" => {
                assert_eq!(pol["policy-type"], "tlsa", "{r}");
                let s = pol["policy-string"].as_array().unwrap();
                assert_eq!(s.len(), 1, "{r}");
                let rec = s[0].as_str().unwrap();
                assert!(
                    rec.starts_with("3 1 1 ") && rec.len() == 6 + 64,
                    "a whole TLSA record: {r}"
                );
                assert_eq!((ok, failed), (0, attempts("c@bad.dane.test", "deferred")));
                let f = &p["failure-details"][0];
                assert_eq!(f["result-type"], "certificate-not-trusted", "{r}");
                assert_eq!(f["receiving-mx-hostname"], DANE_BAD_MX.0, "{r}");
            }
            "opp-tls.test" => {
                assert_eq!(pol["policy-type"], "no-policy-found", "{r}");
                assert_eq!((ok, failed), (attempts("d@opp-tls.test", "sent"), 0));
            }
            "sts-broken.test" => {
                // Delivered over TLS, but the published policy could not
                // be fetched: a failed session of the sts policy.
                assert_eq!(pol["policy-type"], "sts", "{r}");
                assert_eq!((ok, failed), (0, attempts("e@sts-broken.test", "sent")));
                let f = &p["failure-details"][0];
                assert!(
                    ["sts-policy-fetch-error", "sts-webpki-invalid"]
                        .contains(&f["result-type"].as_str().unwrap()),
                    "{r}"
                );
                assert_eq!(f["receiving-mx-hostname"], TLS_MX.0, "{r}");
            }
            other => panic!("unexpected report for {other}"),
        }
    }

    // The report mails' own deliveries are not sessions: rua.test
    // publishes a record but is never reported.
    let deadline = Instant::now() + DELIVERY;
    while lab.metric("tls_policyd_tlsrpt_sessions_total{result=\"report\"}") < 2 {
        assert!(Instant::now() < deadline, "report deliveries never seen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (list, _) = tlsrpt(&lab, &["list"], &day);
    assert!(
        list["domains"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["domain"] != "rua.test"),
        "{list}"
    );

    // Never twice: the day is done for every domain.
    let (again, ok) = tlsrpt(&lab, &["send"], &day);
    assert!(ok, "{again}");
    for d in again["domains"].as_array().unwrap() {
        assert_eq!(d["result"], "done", "{again}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.https.posted(RUA_HOST).len(), 2);
    assert_eq!(lab.https.posted(RUA_HOST2).len(), 1);
    assert_eq!(reports().len(), 2);
    let (list, _) = tlsrpt(&lab, &["list"], &day);
    for d in list["domains"].as_array().unwrap() {
        for x in d["destinations"].as_array().unwrap() {
            assert_eq!(x["state"], "sent", "{list}");
        }
    }
    lab.check_log_matches_postfix(false);
    summary(
        "TLS reports: counted across a restart, sent once by mail and HTTPS, each matching \
         what Postfix did; reports about reports never counted",
    );
}

/// Set every taken-and-failed destination due now, as if its wait had
/// passed.
fn make_retries_due(lab: &Lab) {
    let db = rusqlite::Connection::open(lab.dir.path().join("cache.sqlite")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute(
        "UPDATE tlsrpt_outbox SET next_try = 0 WHERE state = 'retry'",
        [],
    )
    .unwrap();
}

#[test]
fn e2e_tls_reports_a_failing_collector_gets_the_same_report_again_and_a_refusal_is_final() {
    let Some(lab) = Lab::start("e2e-rpr") else {
        return;
    };
    let day = today();
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@opp-tls.test", "b@forced-plain.test"]);
    for (rcpt, status) in [
        ("a@opp-tls.test", "sent"),
        ("b@forced-plain.test", "deferred"),
    ] {
        assert!(
            lab.status(&id, rcpt, mark)
                .contains(&format!("status={status}"))
        );
        lab.outcome(&id, rcpt, status);
    }
    wait_counted(&lab, &day, &[("opp-tls.test", 1), ("forced-plain.test", 1)]);
    let state = |list: &Value, domain: &str| -> Value {
        list["domains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["domain"] == domain)
            .map(|d| d["destinations"][0].clone())
            .unwrap_or_else(|| panic!("{domain} not in {list}"))
    };

    // Both collectors down: both reports wait for another try, and the
    // command says so with exit 1.
    lab.https.respond(RUA_HOST, Response::status(503));
    lab.https.respond(RUA_HOST2, Response::status(503));
    let (sent, ok) = tlsrpt(&lab, &["send"], &day);
    assert!(!ok, "{sent}");
    let (list, _) = tlsrpt(&lab, &["list"], &day);
    for (domain, dest) in [
        ("opp-tls.test", RUA_HTTPS),
        ("forced-plain.test", RUA_HTTPS2),
    ] {
        let x = state(&list, domain);
        assert_eq!(x["destination"], dest, "{list}");
        assert_eq!(x["state"], "retry", "{list}");
        assert_eq!(x["attempts"], 1, "{list}");
        assert!(x["detail"].as_str().unwrap().contains("HTTP 503"), "{list}");
    }
    // Not due yet: nothing is tried.
    let (again, _) = tlsrpt(&lab, &["send"], &day);
    assert!(
        again["domains"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["result"] == "done"),
        "{again}"
    );
    assert_eq!(lab.https.posted(RUA_HOST).len(), 1);
    assert_eq!(lab.https.posted(RUA_HOST2).len(), 1);

    // Due: one collector is back, the other refuses (a 4xx is final).
    make_retries_due(&lab);
    lab.https.respond(RUA_HOST, Response::status(200));
    lab.https.respond(RUA_HOST2, Response::status(400));
    let (sent, ok) = tlsrpt(&lab, &["send"], &day);
    assert!(!ok, "{sent}");
    let posts = lab.https.posted(RUA_HOST);
    assert_eq!(posts.len(), 2);
    assert_eq!(
        posts[0].body, posts[1].body,
        "a retry sends the report it tried first"
    );
    let (list, _) = tlsrpt(&lab, &["list"], &day);
    let x = state(&list, "opp-tls.test");
    assert_eq!(
        (&x["state"], &x["attempts"]),
        (&"sent".into(), &2.into()),
        "{list}"
    );
    let x = state(&list, "forced-plain.test");
    assert_eq!(
        (&x["state"], &x["attempts"]),
        (&"failed".into(), &2.into()),
        "{list}"
    );
    assert!(x["detail"].as_str().unwrap().contains("HTTP 400"), "{list}");

    // Given up and sent: never tried again.
    make_retries_due(&lab);
    let (_, ok) = tlsrpt(&lab, &["send"], &day);
    assert!(ok);
    assert_eq!(lab.https.posted(RUA_HOST).len(), 2);
    assert_eq!(lab.https.posted(RUA_HOST2).len(), 2);
    summary(
        "TLS reports: a failing collector gets the same report again when due, a refusing one \
         is given up, nothing is sent twice",
    );
}
