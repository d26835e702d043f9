//! The Postfix lines the documentation gives agree everywhere: the README,
//! `postfix-examples/main.cf` and `master.cf`, and every deployment in
//! `postfix-examples/deployments/`. Relay control is in
//! `smtpd_relay_restrictions`, `check_policy_service` comes first in
//! `smtpd_recipient_restrictions`, and the commented `submission` and
//! `submissions` entries of `master.cf` keep it. `postfix_deployments`
//! loads the same files into a real Postfix; the end-to-end suite sends
//! mail through them.

mod common;

use std::path::{Path, PathBuf};

use common::examples::{
    self, commented_service, policy_check_problem, restriction_items, service_options,
};

/// The master.cf entries the files ship commented out.
const SUBMISSION: [&str; 2] = ["submission", "submissions"];

fn deployment(name: &str) -> PathBuf {
    examples::dir().join("deployments").join(name)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The first fenced code block after `heading` whose first line starts with
/// `first`.
fn readme_block(heading: &str, first: &str) -> String {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let mut rest = &readme[at..];
    while let Some(open) = rest.find("\n```\n") {
        let body = &rest[open + 5..];
        let close = body.find("\n```").expect("unclosed code block");
        if body.starts_with(first) {
            return body[..close + 1].to_string();
        }
        rest = &body[close + 4..];
    }
    panic!("README: no code block starting {first:?} after {heading:?}");
}

/// README, `postfix-examples/main.cf` and `master.cf` and every deployment
/// give the same lines: relay control in `smtpd_relay_restrictions`, the
/// policy check first in `smtpd_recipient_restrictions`, and submission
/// entries that keep it.
#[test]
fn documented_restriction_lines_agree() {
    let example = examples::read("main.cf");
    let value = |text: &str, name: &str, what: &str| {
        examples::main_cf_value(text, name).unwrap_or_else(|| panic!("{what}: no {name}"))
    };
    let readme = readme_block("## Policy delegation server", "smtpd_relay_restrictions");
    let with_policy = ["socketmap-and-policy", "all-front-doors"];
    for name in [
        "smtpd_relay_restrictions",
        "smtpd_recipient_restrictions",
        "smtpd_end_of_data_restrictions",
    ] {
        let want = value(&example, name, "postfix-examples/main.cf");
        assert_eq!(value(&readme, name, "README"), want, "README: {name}");
        for d in with_policy {
            let text = read(&deployment(d).join("main.cf"));
            assert_eq!(value(&text, name, d), want, "{d}: {name}");
        }
    }
    let relay = value(&example, "smtpd_relay_restrictions", "main.cf");
    assert_eq!(
        value(
            &read(&deployment("socketmap-only").join("main.cf")),
            "smtpd_relay_restrictions",
            "socketmap-only"
        ),
        relay
    );
    let recipient = value(&example, "smtpd_recipient_restrictions", "main.cf");
    assert_eq!(
        policy_check_problem(&recipient),
        None,
        "postfix-examples/main.cf"
    );
    assert!(
        !restriction_items(&recipient)
            .iter()
            .any(|i| i.starts_with("permit")),
        "{recipient}"
    );

    // The submission entries: the README's is postfix-examples/master.cf's,
    // and every deployment with a policy server has the same restriction
    // options, whose recipient list is main.cf's.
    let master = examples::read("master.cf");
    let entry = commented_service(&master, "submission").expect("master.cf: #submission");
    assert_eq!(
        readme_block("## Policy delegation server", "submission inet"),
        format!("{entry}\n"),
        "README's submission entry"
    );
    let restrictions = |entry: &str| -> Vec<(String, String)> {
        service_options(entry)
            .into_iter()
            .filter(|(n, _)| n.ends_with("_restrictions") || n == "smtpd_milters")
            .collect()
    };
    let want = restrictions(&entry);
    assert!(
        want.contains(&(
            "smtpd_recipient_restrictions".to_string(),
            recipient.clone()
        )),
        "{want:?}"
    );
    for service in SUBMISSION {
        let e = commented_service(&master, service)
            .unwrap_or_else(|| panic!("postfix-examples/master.cf: no #{service}"));
        assert_eq!(
            restrictions(&e),
            want,
            "postfix-examples/master.cf {service}"
        );
        for d in with_policy {
            let e = commented_service(&read(&deployment(d).join("master.cf")), service)
                .unwrap_or_else(|| panic!("{d}/master.cf: no #{service}"));
            assert_eq!(restrictions(&e), want, "{d} {service}");
        }
        let e = commented_service(
            &read(&deployment("socketmap-only").join("master.cf")),
            service,
        )
        .unwrap_or_else(|| panic!("socketmap-only/master.cf: no #{service}"));
        assert_eq!(
            restrictions(&e),
            [(
                "smtpd_relay_restrictions".to_string(),
                "permit_sasl_authenticated,reject".to_string()
            )],
            "socketmap-only {service}"
        );
    }
}
