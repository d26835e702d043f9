//! The deployment the benchmark runs, read from its files:
//! `postfix-examples/deployments/all-front-doors` (tls-policyd.toml,
//! policy.toml, main.cf lines), with unix sockets or the floor's addresses
//! put in where asked.

use std::path::PathBuf;

use crate::common::examples;

/// The deployment whose lines the benchmark runs, verbatim.
pub const DEPLOYMENT: &str = "deployments/all-front-doors";

/// main.cf settings per front door, as the deployment gives them.
pub const SOCKETMAP_SETTINGS: &[&str] = &["smtp_tls_policy_maps"];
/// (The deployment may leave the DATA and END-OF-DATA checks out: its
/// milter then writes the per-message record. Left out, they stay empty.)
pub const POLICY_SETTINGS: &[&str] = &[
    "smtpd_recipient_restrictions",
    "smtpd_data_restrictions",
    "smtpd_end_of_data_restrictions",
];
pub const MILTER_SETTINGS: &[&str] = &["smtpd_milters"];
/// Settings that apply whichever front doors are on.
pub const COMMON_SETTINGS: &[&str] = &[
    "smtpd_relay_restrictions",
    "smtpd_policy_service_max_idle",
    "milter_default_action",
    "milter_protocol",
    "milter_connect_timeout",
    "milter_command_timeout",
];

/// The deployment's loopback addresses and the unix sockets that replace
/// them with `BENCH_SOCKETS=unix` (inside Postfix's queue directory, as
/// the Debian package has them).
pub const ENDPOINTS: [(&str, &str); 3] = [
    ("inet:127.0.0.1:10027", "tls-policyd/socketmap.sock"),
    ("inet:127.0.0.1:10028", "tls-policyd/policy.sock"),
    ("inet:127.0.0.1:10029", "tls-policyd/milter.sock"),
];

/// How Postfix reaches the front doors.
#[derive(Debug, Clone)]
pub enum Sockets {
    /// The deployment's loopback TCP addresses.
    Inet,
    /// Unix sockets under this queue directory.
    Unix(PathBuf),
}

impl Sockets {
    pub fn name(&self) -> &'static str {
        match self {
            Sockets::Inet => "loopback TCP",
            Sockets::Unix(_) => "unix sockets in the queue directory",
        }
    }
}

/// The deployment's tls-policyd.toml with its files in the daemon's
/// directory; and its policy file.
pub fn daemon_files(sockets: &Sockets) -> (String, String) {
    let mut config = examples::read(&format!("{DEPLOYMENT}/tls-policyd.toml"))
        .replace("/etc/tls-policyd/policy.toml", "policy.toml")
        .replace("/var/log/tls-policyd/decisions.jsonl", "decisions.jsonl");
    if let Sockets::Unix(queue) = sockets {
        let mut out = String::new();
        for line in config.lines() {
            let unix = ENDPOINTS.iter().find(|(inet, _)| {
                line.trim_start().starts_with("listen") && line.contains(&format!("\"{inet}\""))
            });
            match unix {
                Some((_, path)) => {
                    let path = queue.join(path);
                    out.push_str(&format!(
                        "listen = \"unix:{}\"\nsocket_mode = \"0666\"\n",
                        path.display()
                    ));
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        config = out;
    }
    let policy = examples::read(&format!("{DEPLOYMENT}/policy.toml"));
    (config, policy)
}

/// The deployment's main.cf value of `name` (empty when it has none),
/// with `sockets` as the front doors' addresses.
pub fn deployment_setting(name: &str, sockets: &Sockets) -> String {
    deployment_setting_for(name, sockets, false)
}

/// [`deployment_setting`], with the floor responders' addresses instead
/// of the daemon's when `floor`.
pub fn deployment_setting_for(name: &str, sockets: &Sockets, floor: bool) -> String {
    let main_cf = examples::read(&format!("{DEPLOYMENT}/main.cf"));
    let Some(mut value) = examples::main_cf_value(&main_cf, name) else {
        assert!(
            ![
                "smtpd_recipient_restrictions",
                "smtpd_milters",
                "smtp_tls_policy_maps"
            ]
            .contains(&name),
            "{DEPLOYMENT}/main.cf has no {name}"
        );
        return String::new();
    };
    for (i, (inet, path)) in ENDPOINTS.into_iter().enumerate() {
        let (floor_inet, floor_path) = crate::floor::FLOOR_ENDPOINTS[i];
        let to = match (sockets, floor) {
            (Sockets::Inet, false) => continue,
            (Sockets::Inet, true) => floor_inet.to_string(),
            // Relative to the queue directory, where Postfix daemons run.
            (Sockets::Unix(_), false) => format!("unix:{path}"),
            (Sockets::Unix(_), true) => format!("unix:{floor_path}"),
        };
        value = value.replace(inet, &to);
    }
    value
}
