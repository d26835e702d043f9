//! `tls-policyd report` run as an administrator runs it: the table, the
//! JSON document and the page from the delivery records of a log (its
//! rotated and compressed files found through the configuration), the
//! default window of 24 hours, and the errors.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::deliveries::{delivery, log_text};
use common::run_with_timeout;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};

fn tls_policyd(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tls-policyd"));
    cmd.arg("report").args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TLS_POLICYD_") {
            cmd.env_remove(key);
        }
    }
    run_with_timeout(&mut cmd)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{out:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    err
}

const WINDOW: [&str; 4] = [
    "--since",
    "2026-12-05T08:00:00Z",
    "--until",
    "2026-12-05T10:00:00Z",
];

/// Two hours of mail, in the rotated file (`.1.gz`) and the live one, and
/// a decision record between them.
fn history() -> (Vec<String>, Vec<String>) {
    let t = |hms: &str| format!("2026-12-05T{hms}.000000Z");
    let rotated = vec![
        delivery(&t("08:00:00"), "Q1", "a@forced.test", "sent", "verified", "verified"),
        delivery(&t("08:15:00"), "Q2", "b@forced.test", "deferred", "none", "held"),
        delivery(&t("08:30:00"), "Q3", "c@opp.test", "sent", "none", "plaintext-fallback"),
        r#"{"ts":"2026-12-05T08:40:00.000000Z","frontend":"socketmap","map":"tls_policy","key":"opp.test","domain":"opp.test","tls":"opportunistic","level":"may","reply":"OK","source":"default","reason":"no rule matched"}"#.to_string(),
    ];
    let live = vec![
        delivery(
            &t("09:00:00"),
            "Q4",
            "d@opp.test",
            "sent",
            "trusted",
            "encrypted",
        ),
        delivery(
            &t("09:15:00"),
            "Q2",
            "b@forced.test",
            "deferred",
            "none",
            "held",
        ),
        delivery(
            &t("09:30:00"),
            "Q5",
            "e@bad.test",
            "sent",
            "none",
            "violation",
        ),
        delivery(
            &t("09:59:59"),
            "Q6",
            "f@opp.test",
            "deferred",
            "none",
            "policy-unreachable",
        ),
        // At the end of the window: not counted.
        delivery(
            &t("10:00:00"),
            "Q2",
            "b@forced.test",
            "sent",
            "verified",
            "verified",
        ),
    ];
    (rotated, live)
}

/// A configuration naming `decisions.jsonl` in a fresh directory, that
/// file and its rotated, compressed predecessor.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (rotated, live) = history();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(log_text(&rotated).as_bytes()).unwrap();
    std::fs::write(
        dir.path().join("decisions.jsonl.1.gz"),
        gz.finish().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("decisions.jsonl"), log_text(&live)).unwrap();
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("postfix-examples/policy.toml");
    let config = dir.path().join("tls-policyd.toml");
    std::fs::write(
        &config,
        format!(
            "[socketmap]\nlisten = \"inet:127.0.0.1:10027\"\n[policy]\nfile = {:?}\n\
             [log]\ndecisions = \"decisions.jsonl\"\n",
            policy.to_str().unwrap()
        ),
    )
    .unwrap();
    (dir, config)
}

fn with<'a>(args: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    args.iter().chain(more).copied().collect()
}

#[test]
fn table_from_the_rotated_files_the_configuration_names() {
    let (_dir, config) = setup();
    let config = config.to_str().unwrap();
    let out = ok(&tls_policyd(&with(&WINDOW, &["--config", config])));
    let table: Vec<Vec<&str>> = out
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        out.lines().next().unwrap(),
        "TLS posture 2026-12-05T08:00:00Z .. 2026-12-05T10:00:00Z: \
         7 delivery records, 3 domains, hourly buckets",
        "{out}"
    );
    assert_eq!(
        table,
        [
            [
                "DOMAIN",
                "MESSAGES",
                "DELIVERIES",
                "DELIVERED",
                "ENCRYPTED",
                "VERIFIED",
                "FALLBACKS",
                "HELD",
                "OLDEST_HELD",
                "VIOLATIONS",
                "UNREACHABLE",
                "UNDECIDED"
            ]
            .to_vec(),
            [
                "bad.test", "1", "1", "1", "0.0%", "0.0%", "0", "0", "-", "1", "0", "0"
            ]
            .to_vec(),
            [
                "forced.test",
                "2",
                "3",
                "1",
                "100.0%",
                "100.0%",
                "0",
                "1",
                "1h",
                "45m",
                "0",
                "0",
                "0"
            ]
            .to_vec(),
            [
                "opp.test", "3", "3", "2", "50.0%", "0.0%", "1", "0", "-", "0", "1", "0"
            ]
            .to_vec(),
            [
                "TOTAL", "6", "7", "4", "50.0%", "25.0%", "1", "1", "1h", "45m", "1", "1", "0"
            ]
            .to_vec(),
        ],
        "{out}"
    );

    // One domain.
    let out = ok(&tls_policyd(&with(
        &WINDOW,
        &["--config", config, "--domain", "OPP.test."],
    )));
    assert!(out.contains(": 3 delivery records, 1 domains,"), "{out}");
    assert!(!out.contains("forced.test"), "{out}");
}

#[test]
fn json_document() {
    let (dir, _config) = setup();
    let live = dir.path().join("decisions.jsonl");
    let out = ok(&tls_policyd(&with(
        &WINDOW,
        &["--log", live.to_str().unwrap(), "--json"],
    )));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["records"], 4);
    assert_eq!(v["bucket"], "hour");
    // Held since 09:15: the earlier held record is in the rotated file,
    // which --log does not read.
    assert_eq!(
        v["totals"]["oldest_held"],
        json!({
            "queue_id": "Q2",
            "recipient": "b@forced.test",
            "since": "2026-12-05T09:15:00Z",
            "age_seconds": 2700
        })
    );
    let domains: Vec<&str> = v["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["bad.test", "forced.test", "opp.test"]);
    assert_eq!(v["domains"][2]["share_encrypted"], 1.0);
    assert_eq!(v["domains"][1]["share_encrypted"], Value::Null);
    assert_eq!(
        v["series"],
        json!([
            {"start": "2026-12-05T08:00:00Z", "delivered": 0, "encrypted": 0, "verified": 0},
            {"start": "2026-12-05T09:00:00Z", "delivered": 2, "encrypted": 1, "verified": 0}
        ])
    );
}

#[test]
fn the_window_is_the_last_24_hours_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let ago = |hours: u64| {
        humantime::format_rfc3339_micros(SystemTime::now() - Duration::from_secs(hours * 3600))
            .to_string()
    };
    let lines = [
        delivery(
            &ago(30),
            "Q1",
            "a@old.test",
            "sent",
            "none",
            "plaintext-fallback",
        ),
        delivery(&ago(23), "Q2", "b@new.test", "sent", "verified", "verified"),
        delivery(&ago(1), "Q3", "c@new.test", "deferred", "none", "held"),
    ];
    std::fs::write(&log, log_text(&lines)).unwrap();
    let out = ok(&tls_policyd(&["--log", log.to_str().unwrap(), "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["records"], 2);
    assert_eq!(v["domains"][0]["domain"], "new.test");
    assert_eq!(v["domains"].as_array().unwrap().len(), 1);
    let held = v["totals"]["oldest_held"]["age_seconds"].as_u64().unwrap();
    assert!((3600..3700).contains(&held), "{held}");
    assert_eq!(v["series"].as_array().unwrap().len(), 25, "{v}");
}

#[test]
fn html_to_a_file_or_standard_output() {
    let (dir, config) = setup();
    let config = config.to_str().unwrap();
    let page = dir.path().join("posture.html");
    let out = tls_policyd(&with(
        &WINDOW,
        &["--config", config, "--html", page.to_str().unwrap()],
    ));
    assert_eq!(ok(&out), "");
    let written = std::fs::read_to_string(&page).unwrap();
    assert!(written.starts_with("<!DOCTYPE html>\n"), "{written}");
    assert!(
        written.contains("\"domain\":\"forced.test\",\"messages\":2,"),
        "{written}"
    );
    // Nothing left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("posture"))
        .collect();
    assert_eq!(names, ["posture.html"]);

    let out = ok(&tls_policyd(&with(
        &WINDOW,
        &["--config", config, "--html", "-"],
    )));
    assert_eq!(out, written);

    let missing = dir.path().join("no/such/dir/posture.html");
    let err = fails(
        &tls_policyd(&with(
            &WINDOW,
            &["--config", config, "--html", missing.to_str().unwrap()],
        )),
        1,
    );
    assert!(
        err.contains(&format!("cannot write {}", missing.display())),
        "{err}"
    );
}

#[test]
fn errors() {
    let (dir, config) = setup();
    let config = config.to_str().unwrap();
    // (arguments, exit status, part of the message)
    let cases: [(&[&str], i32, &str); 7] = [
        (
            &[
                "--since",
                "2026-12-05T10:00:00Z",
                "--until",
                "2026-12-05T09:00:00Z",
            ],
            1,
            "the window is empty: --until 2026-12-05T09:00:00.000000Z is not after \
             --since 2026-12-05T10:00:00.000000Z",
        ),
        (
            &["--since", "yesterday"],
            1,
            "bad --since value \"yesterday\": ",
        ),
        (&["--until", "later"], 1, "bad --until value \"later\": "),
        (
            &["--domain", "a@b.test"],
            1,
            "bad --domain value \"a@b.test\": ",
        ),
        (&["--json", "--html", "x.html"], 2, "cannot be used with"),
        (&["--log", "x.jsonl"], 2, "cannot be used with"),
        (&["--verdict", "held"], 2, "unexpected argument '--verdict'"),
    ];
    for (args, code, want) in cases {
        let err = fails(&tls_policyd(&with(args, &["--config", config])), code);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let missing = dir.path().join("missing.jsonl");
    let err = fails(&tls_policyd(&["--log", missing.to_str().unwrap()]), 1);
    assert!(err.contains(&missing.display().to_string()), "{err}");
}
