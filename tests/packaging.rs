//! The packaging files agree with each other and with the daemon: the
//! systemd unit runs the packaged config as the user the maintainer
//! scripts create, its log directory and the one writable path outside its
//! own (the socket directory in Postfix's queue directory, which the
//! maintainer scripts create and purge) are the ones the packaged config
//! uses, every file the package lists exists, and the unit passes
//! `systemd-analyze verify` where systemd is installed, the Debian
//! changelog and copyright are well formed, and, where lintian and
//! cargo-deb are installed (`scripts/test-all` installs both), the built
//! package passes `lintian --pedantic` without an error or a warning. (The
//! package itself is built, installed and run, with Debian's Postfix too,
//! by `scripts/build-deb`.)

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
    // Only the service's own directories and the socket directory in
    // Postfix's queue directory are writable.
    let socket_dir = Path::new("/var/spool/postfix/tls-policyd");
    assert_eq!(
        one(&s, "ReadWritePaths"),
        format!("-{}", socket_dir.display())
    );
    assert_eq!(one(&s, "CapabilityBoundingSet"), "");
    // Nothing lives in /run any more.
    assert!(!s.contains_key("RuntimeDirectory"));

    let config = packaged_config();
    assert_eq!(
        config.log.decisions.parent().unwrap(),
        Path::new("/var/log").join(one(&s, "LogsDirectory"))
    );
    assert_eq!(one(&s, "StateDirectory"), "tls-policyd");
    // All three front doors, on unix sockets in the spool that chrooted
    // Postfix daemons reach, for group postfix only.
    let sm = config.socketmap.as_ref().expect("packaged [socketmap]");
    let ps = config
        .policy_server
        .as_ref()
        .expect("packaged [policy_server]");
    let mi = config.milter.as_ref().expect("packaged [milter]");
    for (name, listen, mode, group, file) in [
        (
            "socketmap",
            &sm.listen,
            &sm.socket_mode,
            &sm.socket_group,
            "socketmap.sock",
        ),
        (
            "policy_server",
            &ps.listen,
            &ps.socket_mode,
            &ps.socket_group,
            "policy.sock",
        ),
        (
            "milter",
            &mi.listen,
            &mi.socket_mode,
            &mi.socket_group,
            "milter.sock",
        ),
    ] {
        match listen {
            ListenAddr::Unix(p) => assert_eq!(p, &socket_dir.join(file), "{name}"),
            other => panic!("packaged {name} listens on {other}"),
        }
        assert_eq!(mode.as_deref(), Some("0660"), "{name}");
        assert_eq!(group.as_deref(), Some("postfix"), "{name}");
    }
    // DANE and MTA-STS are on: a domain that publishes either gets forced
    // TLS with no rule. Both share the one cache file in StateDirectory.
    let dane = config.dane.as_ref().expect("packaged [dane]");
    let sts = config.mta_sts.as_ref().expect("packaged [mta_sts]");
    assert!(sts.enabled, "packaged MTA-STS is switched off");
    assert_eq!(sts.cache_file, dane.cache_file);
    assert_eq!(
        sts.cache_file.parent().unwrap(),
        Path::new("/var/lib").join(one(&s, "StateDirectory"))
    );
    // The comments say what network access it needs.
    let text = read(&root().join("packaging/config.toml"));
    for needed in ["TXT _mta-sts.<domain>", "TCP port 443, to mta-sts.<domain>"] {
        assert!(
            text.contains(needed),
            "packaged config does not say {needed:?}"
        );
    }
    // The prober reads the CAs Postfix trusts from Postfix's own main.cf.
    assert_eq!(
        config.prober.postfix_config_directory.as_deref(),
        Some(Path::new("/etc/postfix"))
    );
    // The unit lets it reach the network (no address allow-list).
    assert!(!s.contains_key("IPAddressDeny"));
    assert!(one(&s, "RestrictAddressFamilies").contains("AF_INET"));
    match &config.metrics.as_ref().expect("packaged [metrics]").listen {
        ListenAddr::Inet(a) => assert!(a.ip().is_loopback(), "metrics on {a}"),
        other => panic!("metrics on {other}"),
    }

    // The maintainer scripts create that user, put it in group postfix,
    // and keep the generated systemd section.
    let postinst = read(&root().join("packaging/debian/postinst"));
    assert!(postinst.contains("adduser --system --group --quiet --home /var/lib/tls-policyd"));
    assert!(postinst.contains("adduser --quiet tls-policyd postfix"));
    // The socket directory: the service user's, traversable by Postfix.
    assert!(postinst.contains(&format!("SOCKET_DIR={}\n", socket_dir.display())));
    assert!(postinst.contains("install -d -o tls-policyd -g postfix -m 0750 \"$SOCKET_DIR\""));
    let postrm = read(&root().join("packaging/debian/postrm"));
    let purge = postrm
        .lines()
        .find(|l| l.trim_start().starts_with("rm -rf "))
        .expect("postrm purge");
    for dir in [
        socket_dir,
        Path::new("/var/lib/tls-policyd"),
        Path::new("/var/log/tls-policyd"),
    ] {
        assert!(
            purge.split_whitespace().any(|w| Path::new(w) == dir),
            "postrm purge keeps {}",
            dir.display()
        );
    }
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

/// The latest entry of packaging/debian/changelog: (version, signer).
fn latest_changelog_entry() -> (String, String) {
    let text = read(&root().join("packaging/debian/changelog"));
    let first = text.lines().next().unwrap();
    let version = first
        .strip_prefix("tls-policyd (")
        .and_then(|r| r.split_once(')'))
        .map(|(v, _)| v.to_string())
        .unwrap_or_else(|| panic!("changelog heading: {first}"));
    assert!(
        first.ends_with(") unstable; urgency=medium"),
        "changelog heading: {first}"
    );
    let trailer = text
        .lines()
        .find(|l| l.starts_with(" -- "))
        .expect("changelog trailer");
    let (signer, date) = trailer[4..]
        .split_once(">  ")
        .unwrap_or_else(|| panic!("changelog trailer: {trailer}"));
    assert!(date.ends_with(" +0000"), "changelog date: {date}");
    (version, format!("{signer}>"))
}

#[test]
fn changelog_copyright_and_maintainer_are_debian_grade() {
    let manifest: toml::Table = toml::from_str(&read(&root().join("Cargo.toml"))).unwrap();
    let version = manifest["package"]["version"].as_str().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let (changelog_version, signer) = latest_changelog_entry();
    // cargo-deb's revision is 1.
    assert_eq!(changelog_version, format!("{version}-1"));
    assert_eq!(
        deb["changelog"].as_str(),
        Some("packaging/debian/changelog")
    );
    // scripts/build-deb's default Maintainer is the changelog's signer,
    // and so is Cargo.toml's for a plain `cargo deb`.
    let maintainer = deb["maintainer"].as_str().unwrap();
    assert_eq!(maintainer, signer);
    assert!(
        !maintainer.contains("@localhost") && !maintainer.contains("postmaster@"),
        "{maintainer}"
    );
    let build_deb = read(&root().join("scripts/build-deb"));
    assert!(build_deb.contains("maintainer=${DEB_MAINTAINER:-$(changelog_maintainer)}"));
    assert!(build_deb.contains("--maintainer \"$maintainer\""));

    // The copyright file: machine-readable, the licence by reference.
    let copyright = read(&root().join("packaging/debian/copyright"));
    assert!(copyright.starts_with(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    ));
    assert!(copyright.contains("\nFiles: *\n"));
    assert!(copyright.contains("\nLicense: GPL-3+\n"));
    assert!(copyright.contains("\"/usr/share/common-licenses/GPL-3\""));
    assert!(
        !copyright.contains("TERMS AND CONDITIONS"),
        "the full licence text"
    );
    assert!(
        deb.get("license-file").is_none(),
        "cargo-deb would generate a copyright with the full licence"
    );
    let assets = deb["assets"].as_array().unwrap();
    assert!(
        assets
            .iter()
            .any(|a| a[0].as_str() == Some("packaging/debian/copyright")
                && a[1].as_str() == Some("usr/share/doc/tls-policyd/copyright"))
    );
}

/// The directory cargo builds into, for this test binary.
fn target_dir() -> PathBuf {
    // <target>/debug/tls-policyd
    Path::new(env!("CARGO_BIN_EXE_tls-policyd"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

/// Remove what `cargo test` adds to a test's environment, so that the
/// release build scripts/build-deb asks for is the one scripts/test-all
/// made (build scripts that watch these variables would run again, and
/// everything after them be rebuilt).
fn without_cargo_test_env(cmd: &mut Command) {
    for (key, value) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let added = k == "CARGO"
            || k == "OUT_DIR"
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_TARGET_TMPDIR"
            || k == "CARGO_RUSTC_CURRENT_DIR"
            || [
                "CARGO_PKG_",
                "CARGO_BIN_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
            ]
            .iter()
            .any(|p| k.starts_with(p));
        if added {
            cmd.env_remove(&key);
        } else if k == "LD_LIBRARY_PATH" {
            // Cargo puts the target and toolchain directories first.
            let target = target_dir();
            let kept: Vec<PathBuf> = std::env::split_paths(&value)
                .filter(|p| {
                    !p.starts_with(&target) && !p.to_string_lossy().contains("/toolchains/")
                })
                .collect();
            if kept.is_empty() {
                cmd.env_remove(&key);
            } else {
                cmd.env(&key, std::env::join_paths(kept).unwrap());
            }
        }
    }
}

#[test]
fn lintian_accepts_the_package() {
    let Some(lintian) = find_tool("lintian") else {
        eprintln!("lintian is not installed (scripts/test-all installs it): package not checked");
        return;
    };
    if find_tool("cargo-deb").is_none()
        && !std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
            .is_some_and(|h| h.join("bin/cargo-deb").is_file())
    {
        eprintln!(
            "cargo-deb is not installed (scripts/build-deb installs it): package not checked"
        );
        return;
    }
    // The release build and the .deb, as scripts/test-all made them
    // (cargo finds the build up to date).
    let mut build = Command::new(root().join("scripts/build-deb"));
    build
        .arg("--build")
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("DEB_MAINTAINER")
        .current_dir(root());
    without_cargo_test_env(&mut build);
    let out = build.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/build-deb --build:\n{log}");
    let deb = log
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb named:\n{log}"))
        .to_string();
    // Lintian takes longer than run_with_timeout allows.
    let out = Command::new(lintian)
        .args([
            "--pedantic",
            "--display-info",
            "--display-experimental",
            "--no-cfg",
        ])
        .arg(&deb)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| {
            l.starts_with("E: ") || l.starts_with("W: ") || l.contains(": duplicate-files ")
        })
        .collect();
    assert!(
        problems.is_empty(),
        "lintian --pedantic {deb}:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Pedantic, informational and (other) experimental tags are shown, not
    // failed on.
    if !report.trim().is_empty() {
        eprintln!("lintian --pedantic {deb}:\n{report}");
    }
    let control = run_with_timeout(Command::new("dpkg-deb").args(["--info", &deb]));
    let control = String::from_utf8_lossy(&control.stdout);
    let (_, signer) = latest_changelog_entry();
    assert!(
        control.contains(&format!(" Maintainer: {signer}\n")),
        "{control}"
    );
}

/// The example files the package ships are each there once: a deployment
/// that uses the same file as another links to it (lintian's
/// duplicate-files).
#[test]
fn packaged_examples_have_no_duplicate_files() {
    let dir = root().join("postfix-examples/deployments");
    let mut seen: BTreeMap<Vec<u8>, PathBuf> = BTreeMap::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                assert!(target.is_relative(), "{}", p.display());
                assert!(p.is_file(), "{} dangles", p.display());
            } else {
                let bytes = std::fs::read(&p).unwrap();
                if let Some(first) = seen.insert(bytes, p.clone()) {
                    panic!(
                        "{} and {} are the same file: make one a symlink to the other",
                        first.display(),
                        p.display()
                    );
                }
            }
        }
    }
    let manifest: toml::Table = toml::from_str(&read(&root().join("Cargo.toml"))).unwrap();
    assert_eq!(
        manifest["package"]["metadata"]["deb"]["preserve-symlinks"].as_bool(),
        Some(true),
        "cargo-deb would copy the linked files"
    );
}
