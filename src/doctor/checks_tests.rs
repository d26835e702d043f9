//! The checks against Postfix configurations written for each case.

use super::super::postconf::{parse_params, parse_services};
use super::*;
use crate::doctor::check;

const MASTER: &str = "\
smtp       inet  n       -       y       -       -       smtpd
submission inet  n       -       y       -       -       smtpd
smtp       unix  -       -       y       -       -       smtp
relay      unix  -       -       y       -       -       smtp
";

fn pf(main: &str, overrides: &str) -> PostfixConfig {
    let mut params = parse_params(
        "queue_directory = /var/spool/postfix\nsmtpd_policy_service_default_action = 451 4.3.5 Server configuration problem\nmilter_default_action = tempfail\n",
    );
    params.extend(parse_params(main));
    PostfixConfig {
        dir: None,
        params,
        services: parse_services(MASTER, overrides),
    }
}

fn ours() -> Ours {
    Ours {
        socketmap: Some(OurSocketmap {
            listen: "inet:127.0.0.1:10027".parse().unwrap(),
            map: "tls_policy".into(),
            forced_map: "tls_forced".into(),
            notfound_default: false,
        }),
        policy_server: Some(
            "unix:/var/spool/postfix/tls-policyd/policy.sock"
                .parse()
                .unwrap(),
        ),
        milter: Some("inet:127.0.0.1:10029".parse().unwrap()),
        dane: true,
        outcomes: false,
    }
}

const GOOD: &str = "\
smtp_tls_policy_maps = socketmap:inet:127.0.0.1:10027:tls_policy
smtpd_recipient_restrictions = check_policy_service { unix:tls-policyd/policy.sock, default_action=DUNNO }, permit_mynetworks, reject_unauth_destination
smtpd_milters = { inet:127.0.0.1:10029, default_action=accept }
non_smtpd_milters = inet:127.0.0.1:10029
smtp_dns_support_level = dnssec
";

/// The problems found with these main.cf lines and master.cf
/// overrides.
fn problems_of(main: &str, overrides: &str) -> Vec<Finding> {
    check(&pf(main, overrides), &ours())
        .findings
        .into_iter()
        .filter(|f| f.severity == Severity::Problem)
        .collect()
}

fn problems(o: &CheckOutcome) -> Vec<&Finding> {
    o.findings
        .iter()
        .filter(|f| f.severity == Severity::Problem)
        .collect()
}

#[test]
fn documented_wiring_has_no_problem() {
    let o = check(&pf(GOOD, ""), &ours());
    assert!(o.findings.is_empty(), "{:#?}", o.findings);
    // smtp/unix and relay/unix use the map; the policy server; the
    // milter; DNSSEC.
    assert_eq!(o.ok.len(), 5, "{:#?}", o.ok);
}

#[test]
fn a_transport_overriding_the_map_is_named_with_its_fix() {
    let p = problems_of(
        GOOD,
        "relay/unix/smtp_tls_policy_maps = hash:/etc/postfix/tls_policy\n",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].text.contains("relay/unix"), "{}", p[0].text);
    assert!(p[0].text.contains("bypasses"), "{}", p[0].text);
    assert_eq!(
        p[0].fix.as_deref(),
        Some("postconf -PX 'relay/unix/smtp_tls_policy_maps'")
    );
    // Our forced map on a transport of its own is fine.
    let o = check(
        &pf(
            GOOD,
            "relay/unix/smtp_tls_policy_maps = socketmap:inet:127.0.0.1:10027:tls_forced\n",
        ),
        &ours(),
    );
    assert!(problems(&o).is_empty(), "{:#?}", o.findings);
    // A map name nobody serves defers everything.
    let p = problems_of(
        GOOD,
        "relay/unix/smtp_tls_policy_maps = socketmap:inet:127.0.0.1:10027:tls_polcy\n",
    );
    assert_eq!(p.len(), 1);
    assert!(p[0].text.contains("\"tls_polcy\""), "{}", p[0].text);
}

#[test]
fn missing_map_and_tables_in_front() {
    let p = problems_of(
        &GOOD.replace(
            "socketmap:inet:127.0.0.1:10027:tls_policy",
            "hash:/etc/postfix/tls",
        ),
        "",
    );
    // Both delivery services use main.cf's value.
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!(
        p[0].fix.as_deref(),
        Some("postconf -e 'smtp_tls_policy_maps = socketmap:inet:127.0.0.1:10027:tls_policy'")
    );
    let o = check(
        &pf(
            &GOOD.replace(
                "= socketmap:inet:127.0.0.1:10027:tls_policy",
                "= hash:/etc/postfix/tls, socketmap:inet:127.0.0.1:10027:tls_policy",
            ),
            "",
        ),
        &ours(),
    );
    assert!(problems(&o).is_empty());
    assert!(o.findings.iter().all(|f| f.text.contains("answer first")));
}

#[test]
fn a_chrooted_client_cannot_reach_a_socket_outside_the_queue_directory() {
    let mut o = ours();
    o.socketmap.as_mut().unwrap().listen = "unix:/run/tls-policyd/socketmap.sock".parse().unwrap();
    let main = GOOD.replace(
        "socketmap:inet:127.0.0.1:10027:tls_policy",
        "socketmap:unix:/run/tls-policyd/socketmap.sock:tls_policy",
    );
    let out = check(&pf(&main, ""), &o);
    let p = problems(&out);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].text
            .contains("smtp/unix runs chrooted in /var/spool/postfix")
    );
    assert!(
        p[0].fix
            .as_deref()
            .unwrap()
            .contains("postconf -F 'smtp/unix/chroot=n'")
    );
    // The same socket under the queue directory, named relative to it.
    o.socketmap.as_mut().unwrap().listen = "unix:/var/spool/postfix/tls-policyd/socketmap.sock"
        .parse()
        .unwrap();
    let main = GOOD.replace(
        "socketmap:inet:127.0.0.1:10027:tls_policy",
        "socketmap:unix:tls-policyd/socketmap.sock:tls_policy",
    );
    assert!(problems(&check(&pf(&main, ""), &o)).is_empty());
}

#[test]
fn policy_server_order_default_action_and_overriding_services() {
    let main = GOOD.replace(
        "check_policy_service { unix:tls-policyd/policy.sock, default_action=DUNNO }, permit_mynetworks",
        "permit_mynetworks, check_policy_service unix:tls-policyd/policy.sock",
    );
    let p = problems_of(&main, "");
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(
        p[0].text
            .contains("\"451 4.3.5 Server configuration problem\""),
        "{}",
        p[0].text
    );
    assert!(
        p[1].text.contains("permit_mynetworks comes before"),
        "{}",
        p[1].text
    );
    // A submission service with its own list, without the check.
    let p = problems_of(
        GOOD,
        "submission/inet/smtpd_recipient_restrictions = permit_sasl_authenticated, reject\n",
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].text.contains("submission/inet"));
    assert_eq!(
        p[0].fix.as_deref(),
        Some(
            "postconf -P 'submission/inet/smtpd_recipient_restrictions=check_policy_service { unix:tls-policyd/policy.sock, default_action=DUNNO }, permit_sasl_authenticated, reject'"
        )
    );
    // Its own relay restrictions alone: main.cf's recipient list still
    // asks (a permit in one list does not skip the other).
    let o = check(
        &pf(
            GOOD,
            "submission/inet/smtpd_relay_restrictions = permit_sasl_authenticated, reject\n",
        ),
        &ours(),
    );
    assert!(problems(&o).is_empty(), "{:#?}", o.findings);
    // Not asked anywhere.
    let main = GOOD.replace(
        "check_policy_service { unix:tls-policyd/policy.sock, default_action=DUNNO }, ",
        "",
    );
    let p = check(&pf(&main, ""), &ours()).findings;
    assert!(
        p.iter()
            .any(|f| f.text.starts_with("no restriction list asks"))
    );
}

#[test]
fn milter_lists_and_default_action() {
    let main = GOOD.replace(
        "{ inet:127.0.0.1:10029, default_action=accept }",
        "inet:127.0.0.1:10029",
    );
    let p = problems_of(&main, "");
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].text.contains("milter_default_action = tempfail"));
    let main = main.replace("non_smtpd_milters = inet:127.0.0.1:10029\n", "");
    let o = check(
        &pf(&format!("{main}milter_default_action = accept\n"), ""),
        &ours(),
    );
    assert!(problems(&o).is_empty());
    assert_eq!(o.findings.len(), 1);
    assert!(o.findings[0].text.contains("sendmail(1)"));
    let p = problems_of(
        GOOD,
        "submission/inet/smtpd_milters = inet:127.0.0.1:9999\n",
    );
    assert_eq!(p.len(), 1);
    assert!(p[0].text.contains("submission/inet sets smtpd_milters"));
}

#[test]
fn dane_needs_dnssec_lookups() {
    let main = GOOD.replace("smtp_dns_support_level = dnssec\n", "");
    let p = check(&pf(&main, ""), &ours()).findings;
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].fix.as_deref(),
        Some("postconf -e 'smtp_dns_support_level = dnssec'")
    );
    let mut o = ours();
    o.dane = false;
    assert!(check(&pf(&main, ""), &o).findings.is_empty());
}

#[test]
fn outcomes_need_the_tls_summary_in_the_log() {
    let mut o = ours();
    o.outcomes = true;
    // Postfix's default is 0.
    let p: Vec<Finding> = check(&pf(GOOD, ""), &o).findings;
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].severity, Severity::Problem);
    assert!(
        p[0].text
            .starts_with("smtp_tls_loglevel = (empty): Postfix logs no TLS summary")
    );
    assert_eq!(
        p[0].fix.as_deref(),
        Some("postconf -e 'smtp_tls_loglevel = 1'")
    );
    let main = format!("{GOOD}smtp_tls_loglevel = 0\n");
    let p = check(&pf(&main, ""), &o).findings;
    assert!(p[0].text.starts_with("smtp_tls_loglevel = 0:"), "{p:#?}");
    // 1 or more: fine, and said.
    for level in ["1", "2"] {
        let main = format!("{GOOD}smtp_tls_loglevel = {level}\n");
        let c = check(&pf(&main, ""), &o);
        assert!(c.findings.is_empty(), "{:#?}", c.findings);
        assert!(
            c.ok.iter()
                .any(|l| l.starts_with(&format!("smtp_tls_loglevel = {level} ")))
        );
    }
    // A transport that turns it off is named with its own fix.
    let main = format!("{GOOD}smtp_tls_loglevel = 1\n");
    let p = check(&pf(&main, "relay/unix/smtp_tls_loglevel = 0\n"), &o).findings;
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].text
            .contains("master.cf service relay/unix sets smtp_tls_loglevel=0")
    );
    assert_eq!(
        p[0].fix.as_deref(),
        Some("postconf -P 'relay/unix/smtp_tls_loglevel=1'")
    );
    // Every transport raising it itself leaves main.cf's value unused.
    let p = check(
        &pf(
            GOOD,
            "smtp/unix/smtp_tls_loglevel = 1\nrelay/unix/smtp_tls_loglevel = 1\n",
        ),
        &o,
    )
    .findings;
    assert!(p.is_empty(), "{p:#?}");
    // Without [outcomes] the level is not checked.
    assert!(check(&pf(GOOD, ""), &ours()).findings.is_empty());
}

#[test]
fn endpoints_reach_listeners() {
    let q = Path::new("/var/spool/postfix");
    let l: ListenAddr = "inet:127.0.0.1:10027".parse().unwrap();
    let e = |s: &str| PostfixEndpoint::parse(s).unwrap();
    assert!(reaches(&e("inet:127.0.0.1:10027"), &l, q, false));
    assert!(reaches(&e("inet:localhost:10027"), &l, q, false));
    assert!(!reaches(&e("inet:127.0.0.2:10027"), &l, q, false));
    assert!(!reaches(&e("inet:127.0.0.1:10028"), &l, q, false));
    assert_eq!(postfix_name(&l, q), "inet:127.0.0.1:10027");
    let v6: ListenAddr = "inet:[::1]:10027".parse().unwrap();
    assert_eq!(postfix_name(&v6, q), "inet:[::1]:10027");
    assert!(reaches(&e("inet:[::1]:10027"), &v6, q, false));
    let u: ListenAddr = "unix:/var/spool/postfix/t/s.sock".parse().unwrap();
    assert_eq!(postfix_name(&u, q), "unix:t/s.sock");
    assert!(reaches(&e("unix:t/s.sock"), &u, q, true));
    assert!(reaches(
        &e("unix:/var/spool/postfix/t/s.sock"),
        &u,
        q,
        false
    ));
    assert!(!reaches(
        &e("unix:/var/spool/postfix/t/s.sock"),
        &u,
        q,
        true
    ));
}
