//! The Postfix lines the documentation gives agree everywhere: the README,
//! `postfix-examples/main.cf` and `master.cf`, and every deployment in
//! `postfix-examples/deployments/`. Relay control is in
//! `smtpd_relay_restrictions`, `check_policy_service` comes first in
//! `smtpd_recipient_restrictions`, and the commented `submission` and
//! `submissions` entries of `master.cf` keep it. A deployment names its
//! own listeners (the packaged unix sockets in Postfix's spool, or
//! loopback TCP) and otherwise gives the same lines; the README's lines
//! for the Debian package are those of the packaged `config.toml` and of
//! the deployment on the packaged sockets. `postfix_deployments` loads the
//! same files into a real Postfix; the end-to-end suite sends mail through
//! them.

mod common;

use std::path::{Path, PathBuf};

use common::examples::{
    self, commented_service, main_cf_value, policy_check_problem, policy_service,
    restriction_items, service_options,
};

/// The master.cf entries the files ship commented out.
const SUBMISSION: [&str; 2] = ["submission", "submissions"];

fn deployment(name: &str) -> PathBuf {
    examples::dir().join("deployments").join(name)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Postfix's queue directory, where the packaged sockets are.
const QUEUE_DIRECTORY: &str = "/var/spool/postfix/";

/// A tls-policyd `listen` value as Postfix's `main.cf` names it:
/// `inet:HOST:PORT` as it is, a unix socket in the queue directory
/// relative to it (every Postfix daemon works there).
fn as_named_in_main_cf(listen: &str) -> String {
    match listen.strip_prefix("unix:") {
        Some(path) => format!(
            "unix:{}",
            path.strip_prefix(QUEUE_DIRECTORY).unwrap_or(path)
        ),
        None => listen.to_string(),
    }
}

/// `[SECTION] listen` of a tls-policyd configuration file.
fn listen(config: &Path, section: &str) -> String {
    let table: toml::Table = read(config)
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    table
        .get(section)
        .and_then(|s| s.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or_else(|| panic!("{}: no [{section}] listen", config.display()))
        .to_string()
}

/// The policy server a deployment's `main.cf` asks, checked against the
/// `[policy_server] listen` of its `tls-policyd.toml`.
fn deployment_policy_server(d: &str) -> String {
    let main = read(&deployment(d).join("main.cf"));
    let list = main_cf_value(&main, "smtpd_recipient_restrictions")
        .unwrap_or_else(|| panic!("{d}: no smtpd_recipient_restrictions"));
    let addr =
        policy_service(&list).unwrap_or_else(|| panic!("{d}: no check_policy_service in {list:?}"));
    let config = deployment(d).join("tls-policyd.toml");
    assert_eq!(
        as_named_in_main_cf(&listen(&config, "policy_server")),
        addr,
        "{d}: main.cf asks the policy server where tls-policyd.toml does not listen"
    );
    addr
}

fn readme() -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
}

/// The first fenced code block after `heading` whose first line starts with
/// `first`.
fn readme_block(heading: &str, first: &str) -> String {
    let readme = readme();
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
/// entries that keep it. A deployment's lines differ only in the policy
/// server they name, the one its `tls-policyd.toml` listens on.
#[test]
fn documented_restriction_lines_agree() {
    let example = examples::read("main.cf");
    let value = |text: &str, name: &str, what: &str| {
        main_cf_value(text, name).unwrap_or_else(|| panic!("{what}: no {name}"))
    };
    let readme = readme_block("## Policy delegation server", "smtpd_relay_restrictions");
    let with_policy = ["socketmap-and-policy", "all-front-doors"];
    let example_server = policy_service(&value(
        &example,
        "smtpd_recipient_restrictions",
        "postfix-examples/main.cf",
    ))
    .expect("postfix-examples/main.cf: no check_policy_service");
    assert_eq!(
        as_named_in_main_cf(&listen(
            &examples::dir().join("tls-policyd.toml"),
            "policy_server"
        )),
        example_server,
        "postfix-examples/main.cf asks the policy server where tls-policyd.toml does not listen"
    );
    // The example's lines with a deployment's policy server.
    let at = |line: &str, d: &str| line.replace(&example_server, &deployment_policy_server(d));
    for name in [
        "smtpd_relay_restrictions",
        "smtpd_recipient_restrictions",
        "smtpd_end_of_data_restrictions",
    ] {
        let want = value(&example, name, "postfix-examples/main.cf");
        assert_eq!(value(&readme, name, "README"), want, "README: {name}");
        for d in with_policy {
            let text = read(&deployment(d).join("main.cf"));
            // With the milter on, the milter writes the per-message record
            // and the policy server is asked at RCPT only.
            if name == "smtpd_end_of_data_restrictions"
                && main_cf_value(&text, "smtpd_milters").is_some()
            {
                assert_eq!(main_cf_value(&text, name), None, "{d}: {name}");
                assert_eq!(main_cf_value(&text, "smtpd_data_restrictions"), None, "{d}");
                continue;
            }
            assert_eq!(value(&text, name, d), at(&want, d), "{d}: {name}");
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
            let want: Vec<(String, String)> =
                want.iter().map(|(n, v)| (n.clone(), at(v, d))).collect();
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

/// The main.cf lines for the Debian package: the README's (Installing) are
/// those in the comments of the packaged `config.toml`, name the sockets
/// it listens on relative to the queue directory, keep the policy check
/// first, and are the lines of the deployment on the packaged sockets.
#[test]
fn packaged_lines_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("packaging/config.toml");
    let lines = readme_block("### Installing", "smtp_tls_policy_maps");
    // The indented block of main.cf lines in the config's comments.
    let commented: String = read(&config)
        .lines()
        .skip_while(|l| !l.starts_with("#   smtp_tls_policy_maps = "))
        .take_while(|l| *l != "#")
        .map(|l| format!("{}\n", l.strip_prefix("#   ").unwrap_or(l)))
        .collect();
    assert_eq!(
        lines, commented,
        "README (Installing) and packaging/config.toml"
    );

    let value = |name: &str| {
        main_cf_value(&lines, name).unwrap_or_else(|| panic!("README (Installing): no {name}"))
    };
    let socketmap = as_named_in_main_cf(&listen(&config, "socketmap"));
    let policy = as_named_in_main_cf(&listen(&config, "policy_server"));
    let milter = as_named_in_main_cf(&listen(&config, "milter"));
    for l in [&socketmap, &policy, &milter] {
        assert!(
            l.starts_with("unix:tls-policyd/"),
            "packaging/config.toml: {l} is not a socket in Postfix's spool"
        );
    }
    assert_eq!(
        value("smtp_tls_policy_maps"),
        format!("socketmap:{socketmap}:tls_policy")
    );
    let recipient = value("smtpd_recipient_restrictions");
    assert_eq!(policy_check_problem(&recipient), None, "{recipient}");
    assert_eq!(policy_service(&recipient), Some(policy.clone()));
    assert_eq!(
        policy_service(&value("smtpd_end_of_data_restrictions")),
        Some(policy.clone())
    );
    assert_eq!(value("smtpd_milters"), milter);

    // The deployment on the packaged sockets gives the same lines.
    let d = "socketmap-and-policy";
    assert_eq!(deployment_policy_server(d), policy, "{d}");
    let main = read(&deployment(d).join("main.cf"));
    for name in [
        "smtp_tls_policy_maps",
        "smtpd_recipient_restrictions",
        "smtpd_end_of_data_restrictions",
    ] {
        assert_eq!(
            main_cf_value(&main, name).unwrap_or_else(|| panic!("{d}: no {name}")),
            value(name),
            "{d}: {name}"
        );
    }
    // So does its submission entry, which the README names.
    let entry = commented_service(&read(&deployment(d).join("master.cf")), "submission")
        .unwrap_or_else(|| panic!("{d}/master.cf: no #submission"));
    let option = format!("-o {{ smtpd_recipient_restrictions = {recipient} }}");
    assert!(entry.contains(&option), "{d}/master.cf: no {option}");
    assert!(
        readme().contains(&format!("`{option}`")),
        "README (Installing) does not give {option}"
    );
}
