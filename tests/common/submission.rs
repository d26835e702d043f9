//! A private Postfix wired to tls-policyd exactly as `postfix-examples/`
//! documents it, receiving mail the way a mail server's own users send it:
//! from a client in `mynetworks`, and from a SASL-authenticated user on
//! the `submission` entry of the example `master.cf`, enabled.
//!
//! - main.cf: the tls-policyd lines of a deployment's `main.cf`
//!   ([`TLS_POLICYD_SETTINGS`]), verbatim; `mynetworks = 127.0.0.1/32`, so
//!   a client on [`MUA_IP`] is not in it;
//! - master.cf: the deployment's commented `#submission` entry, enabled on
//!   `127.0.0.1:`[`SUBMISSION_PORT`] and run without chroot (as every
//!   service of the test instance, so it sees the namespace's resolver);
//! - Cyrus SASL: `sasl/smtpd.conf` in the config directory
//!   (`cyrus_sasl_config_path`; Debian's Postfix reads `smtpd.conf`
//!   from `$config_directory/sasl`) with `auxprop`/`sasldb`,
//!   `PLAIN` and `LOGIN`, and a sasldb file made by `saslpasswd2`;
//! - a self-signed certificate for smtpd, since the entry demands TLS
//!   (`smtpd_tls_security_level=encrypt`, `smtpd_tls_auth_only=yes`).
//!
//! Needs `saslpasswd2` (Debian's sasl2-bin) and the PLAIN and sasldb
//! plugins (libsasl2-modules, libsasl2-modules-db).

#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Daemon;
use super::examples::{self, main_cf_value, policy_service};
use super::postfix::{CLIENT_HELO, Mail, Postfix, PostfixOptions, SmtpSession};

/// The deployment whose `main.cf` and `master.cf` lines are used.
pub const DEPLOYMENT: &str = "deployments/all-front-doors";

/// The main.cf settings that wire tls-policyd in.
pub const TLS_POLICYD_SETTINGS: &[&str] = &[
    "smtp_tls_policy_maps",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
    "smtpd_policy_service_max_idle",
    "smtpd_milters",
    "non_smtpd_milters",
    "milter_default_action",
    "milter_protocol",
    "milter_connect_timeout",
    "milter_command_timeout",
];

/// The port of the enabled submission entry.
pub const SUBMISSION_PORT: u16 = 587;
/// The address a mail user agent connects from: not in `mynetworks`.
pub const MUA_IP: &str = "127.0.0.50";
/// The SASL user and its password.
pub const SASL_REALM: &str = "test.example";
pub const SASL_USER: &str = "alice";
pub const SASL_PASSWORD: &str = "correct horse battery staple";

/// `user@realm`, the name the user authenticates as.
pub fn sasl_login() -> String {
    format!("{SASL_USER}@{SASL_REALM}")
}

fn main_cf() -> String {
    examples::read(&format!("{DEPLOYMENT}/main.cf"))
}

/// Where the documented lines expect tls-policyd's front doors.
pub struct FrontDoors {
    /// `inet:HOST:PORT` of each.
    pub socketmap: String,
    pub policy: String,
    pub milter: String,
}

/// The listeners the deployment's `main.cf` names: tls-policyd must listen
/// there for the lines to be used unchanged.
pub fn front_doors() -> FrontDoors {
    let main = main_cf();
    let value = |name: &str| {
        main_cf_value(&main, name).unwrap_or_else(|| panic!("{DEPLOYMENT}/main.cf: no {name}"))
    };
    let maps = value("smtp_tls_policy_maps");
    let socketmap = maps
        .strip_prefix("socketmap:")
        .and_then(|m| m.rsplit_once(':'))
        .map(|(addr, _map)| addr.to_string())
        .unwrap_or_else(|| panic!("not a socketmap: {maps}"));
    let policy = policy_service(&value("smtpd_recipient_restrictions"))
        .unwrap_or_else(|| panic!("{DEPLOYMENT}/main.cf: no check_policy_service"));
    FrontDoors {
        socketmap,
        policy,
        milter: value("smtpd_milters"),
    }
}

/// The deployment's commented `#submission` entry, enabled on
/// `127.0.0.1:PORT` without chroot; the `-o` lines as they are.
pub fn submission_entry() -> String {
    let master = examples::read(&format!("{DEPLOYMENT}/master.cf"));
    let entry = examples::commented_service(&master, "submission")
        .unwrap_or_else(|| panic!("{DEPLOYMENT}/master.cf: no #submission entry"));
    let (first, rest) = entry.split_once('\n').unwrap_or((&entry, ""));
    let mut f: Vec<&str> = first.split_whitespace().collect();
    assert!(f.len() == 8 && f[0] == "submission", "{first}");
    let listen = format!("127.0.0.1:{SUBMISSION_PORT}");
    f[0] = &listen;
    f[4] = "n";
    format!("{}\n{rest}", f.join(" "))
}

/// `opts` with the documented tls-policyd lines, `mynetworks` without
/// [`MUA_IP`], Cyrus SASL and the submission entry. Call
/// [`add_sasl_user`] once the instance runs.
pub fn documented(opts: PostfixOptions) -> PostfixOptions {
    let main = main_cf();
    let mut opts = opts;
    for name in TLS_POLICYD_SETTINGS {
        let value =
            main_cf_value(&main, name).unwrap_or_else(|| panic!("{DEPLOYMENT}/main.cf: no {name}"));
        opts = opts.set(name, value);
    }
    let cert = rcgen::generate_simple_self_signed(vec![super::postfix::MYHOSTNAME.to_string()])
        .expect("self-signed certificate");
    let pem = format!("{}{}", cert.cert.pem(), cert.signing_key.serialize_pem());
    opts.set("mynetworks", "127.0.0.1/32")
        .set("smtpd_sasl_type", "cyrus")
        .set("cyrus_sasl_config_path", "$config_directory/sasl")
        .set("smtpd_tls_cert_file", "$config_directory/smtpd.pem")
        .set("smtpd_tls_key_file", "$smtpd_tls_cert_file")
        .file("smtpd.pem", &pem)
        .master_line(&submission_entry())
}

/// The SASL configuration (`sasl/smtpd.conf`) and a sasldb with
/// [`SASL_USER`] in [`SASL_REALM`], readable by Postfix's smtpd.
pub fn add_sasl_user(pf: &Postfix) {
    let db = pf.config_dir().join("sasldb2");
    std::fs::create_dir_all(pf.config_dir().join("sasl")).expect("create sasl/");
    pf.write_file(
        "sasl/smtpd.conf",
        &format!(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {}\n\
             mech_list: PLAIN LOGIN\n",
            db.display()
        ),
    );
    let mut cmd = Command::new("saslpasswd2");
    cmd.args(["-c", "-p", "-f"])
        .arg(&db)
        .args(["-u", SASL_REALM, SASL_USER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run saslpasswd2 (Debian: sasl2-bin)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(SASL_PASSWORD.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "saslpasswd2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let postfix = nix::unistd::User::from_name("postfix")
        .expect("look up user postfix")
        .expect("no user postfix");
    nix::unistd::chown(&db, Some(postfix.uid), None).expect("chown sasldb");
}

/// swaks from [`MUA_IP`] to the submission port: STARTTLS, and with
/// `auth` SASL PLAIN as [`sasl_login`].
pub fn submit(pf: &Postfix, mail: &Mail, auth: bool) -> SmtpSession {
    let mut args: Vec<String> = vec![
        "--server".into(),
        format!("127.0.0.1:{SUBMISSION_PORT}"),
        "--local-interface".into(),
        MUA_IP.into(),
        "--helo".into(),
        CLIENT_HELO.into(),
        "--tls".into(),
    ];
    if auth {
        args.extend([
            "--auth".into(),
            "PLAIN".into(),
            "--auth-user".into(),
            sasl_login(),
            "--auth-password".into(),
            SASL_PASSWORD.into(),
        ]);
    }
    args.extend(mail.args());
    pf.swaks_raw(&args)
}

/// The policy server's one RCPT record for `rcpt`, waiting up to
/// `timeout` for it; panics when there is none or more than one.
pub fn rcpt_record(daemon: &Daemon, rcpt: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let found: Vec<Value> = daemon
            .decisions()
            .into_iter()
            .filter(|r| {
                r["frontend"] == "policy" && r["recipient"] == rcpt && r.get("recipients").is_none()
            })
            .collect();
        if let [r] = &found[..] {
            return r.clone();
        }
        assert!(found.is_empty(), "{rcpt}: {found:#?}");
        assert!(Instant::now() < deadline, "no policy record for {rcpt}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
