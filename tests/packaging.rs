//! The packaging files agree with each other and with the daemon: the
//! systemd unit runs the packaged config as the user the maintainer
//! scripts create, its runtime, state and log directories are the ones
//! the packaged config uses, every file the package lists exists, and the
//! unit passes `systemd-analyze verify` where systemd is installed. (The
//! package itself is built, installed and run by `scripts/build-deb`.)

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{find_tool, run_with_timeout};
use tls_policyd::config::Config;
use tls_policyd::listen::ListenAddr;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `Key=Value` lines of the unit's `[Service]` section, in order.
fn service_settings() -> BTreeMap<String, Vec<String>> {
    let unit = read(&root().join("packaging/systemd/tls-policyd.service"));
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("{line}"));
        out.entry(k.to_string()).or_default().push(v.to_string());
    }
    out
}

fn one<'a>(s: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match s.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{key}: expected one setting, found {other:?}"),
    }
}

/// The packaged config, loaded as the daemon would (its policy file is
/// resolved next to it for the check).
fn packaged_config() -> Config {
    let dir = tempfile::tempdir().unwrap();
    let text = read(&root().join("packaging/config.toml"));
    let text = text.replace(
        "/etc/tls-policyd/policy.toml",
        &root().join("packaging/policy.toml").display().to_string(),
    );
    let p = dir.path().join("config.toml");
    std::fs::write(&p, text).unwrap();
    Config::load(&p).unwrap()
}

#[test]
fn unit_matches_the_packaged_config_and_user() {
    let s = service_settings();
    assert_eq!(one(&s, "Type"), "notify");
    assert_eq!(one(&s, "User"), "tls-policyd");
    assert_eq!(one(&s, "NoNewPrivileges"), "yes");
    assert_eq!(one(&s, "ProtectSystem"), "strict");
    assert_eq!(one(&s, "UMask"), "0117");
    assert_eq!(
        one(&s, "ExecStart"),
        "/usr/bin/tls-policyd serve --config /etc/tls-policyd/config.toml"
    );
    let reload = &s["ExecReload"];
    assert_eq!(
        reload,
        &[
            "/usr/bin/tls-policyd check-config --config /etc/tls-policyd/config.toml".to_string(),
            "/bin/kill -HUP $MAINPID".to_string()
        ]
    );
    // Only the service's own directories (and the spool socket directory)
    // are writable.
    assert_eq!(one(&s, "ReadWritePaths"), "-/var/spool/postfix/tls-policyd");
    assert_eq!(one(&s, "CapabilityBoundingSet"), "");

    let config = packaged_config();
    let socket = match &config.socketmap.as_ref().unwrap().listen {
        ListenAddr::Unix(p) => p.clone(),
        other => panic!("packaged socketmap listens on {other}"),
    };
    assert_eq!(
        socket.parent().unwrap(),
        Path::new("/run").join(one(&s, "RuntimeDirectory"))
    );
    assert_eq!(
        config.log.decisions.parent().unwrap(),
        Path::new("/var/log").join(one(&s, "LogsDirectory"))
    );
    assert_eq!(one(&s, "StateDirectory"), "tls-policyd");
    // Postfix must traverse the runtime directory to reach the socket.
    assert_eq!(one(&s, "RuntimeDirectoryMode"), "0755");
    let sm = config.socketmap.as_ref().unwrap();
    assert_eq!(sm.socket_mode.as_deref(), Some("0660"));
    assert_eq!(sm.socket_group.as_deref(), Some("postfix"));
    match &config.metrics.as_ref().expect("packaged [metrics]").listen {
        ListenAddr::Inet(a) => assert!(a.ip().is_loopback(), "metrics on {a}"),
        other => panic!("metrics on {other}"),
    }

    // The maintainer scripts create that user, put it in group postfix,
    // and keep the generated systemd section.
    let postinst = read(&root().join("packaging/debian/postinst"));
    assert!(postinst.contains("adduser --system --group --quiet --home /var/lib/tls-policyd"));
    assert!(postinst.contains("adduser --quiet tls-policyd postfix"));
    for script in ["postinst", "postrm"] {
        let text = read(&root().join("packaging/debian").join(script));
        assert_eq!(text.matches("#DEBHELPER#").count(), 1, "{script}");
        assert!(text.starts_with("#!/bin/sh\n"), "{script}");
    }
    // logrotate writes the log as the service user and signals only it.
    let rotate = read(&root().join("packaging/logrotate/tls-policyd"));
    assert!(rotate.starts_with("# /etc/logrotate.d/tls-policyd"));
    assert!(rotate.contains(&format!("{} {{", config.log.decisions.display())));
    assert!(rotate.contains("create 0640 tls-policyd tls-policyd"));
    assert!(rotate.contains("pkill -HUP -x -u tls-policyd tls-policyd"));
}

#[test]
fn every_packaged_file_exists() {
    let manifest: toml::Table = toml::from_str(&read(&root().join("Cargo.toml"))).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    assert!(assets.len() >= 10);
    for a in assets {
        let src = a[0].as_str().unwrap();
        // Built by scripts/build-deb before cargo-deb runs.
        if src.starts_with("target/") {
            continue;
        }
        if let Some(dir) = src.strip_suffix("/**/*") {
            assert!(root().join(dir).is_dir(), "{src}");
        } else {
            assert!(root().join(src).is_file(), "{src}");
        }
    }
    for f in deb["conf-files"].as_array().unwrap() {
        let f = f.as_str().unwrap();
        assert!(
            assets.iter().any(|a| {
                let dest = a[1].as_str().unwrap();
                format!("/{dest}") == f
            }),
            "conffile {f} is not installed"
        );
    }
}

#[test]
fn systemd_accepts_the_unit() {
    let Some(analyze) = find_tool("systemd-analyze") else {
        eprintln!(
            "systemd-analyze is not installed; scripts/build-deb verifies the installed unit"
        );
        return;
    };
    // `verify` also checks that ExecStart's binary exists: point it at the
    // one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = read(&root().join("packaging/systemd/tls-policyd.service"))
        .replace("/usr/bin/tls-policyd", env!("CARGO_BIN_EXE_tls-policyd"));
    let path = dir.path().join("tls-policyd.service");
    std::fs::write(&path, unit).unwrap();
    let out = run_with_timeout(
        Command::new(analyze)
            .args(["verify", "--man=no"])
            .arg(&path),
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
