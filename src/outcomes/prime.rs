//! The index taught, when the follower starts, what was decided before:
//! the decision log's socketmap lookups and the policy server's and
//! milter's per-recipient decisions stamped within `hop_window` before the
//! start, read from the log file and its rotated siblings. Postfix goes on
//! delivering while tls-policyd restarts (over connections and with
//! policies looked up before), and the follower reads after the start
//! what was logged before it; without this those deliveries would be
//! joined with nothing, or with the operator's rule alone.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::engine::decision::{PolicyWord, SourceKind, Tls};
use crate::engine::recipient::RecipientDecision;
use crate::log::reader::{ReadError, read_lines_since, rotated_files};
use crate::log::record::{DecidedBy, GoverningDecision};

use super::correlate::DecisionIndex;

/// What was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Primed {
    /// Record lines stamped within the window.
    pub lines: u64,
    /// Decisions noted in the index.
    pub noted: u64,
}

/// The fields of a decision record the index needs (any record kind;
/// what a kind lacks stays `None`).
#[derive(Debug, Deserialize)]
struct Line {
    frontend: String,
    #[serde(default)]
    queue_id: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    tls: Option<Tls>,
    /// Lookups answered `OK` only.
    #[serde(default)]
    level: Option<Arc<str>>,
    #[serde(default)]
    source: Option<SourceKind>,
    #[serde(default)]
    rule: Option<u32>,
    #[serde(default)]
    reason: Option<Arc<str>>,
    #[serde(default)]
    client_pid: Option<u32>,
    /// A policy server RCPT record's recipient.
    #[serde(default)]
    recipient: Option<String>,
    /// A per-message record's recipients.
    #[serde(default)]
    recipients: Option<Vec<RecipientDecision>>,
}

/// Note in `index` the decisions of the decision log `log` (and its
/// rotated files) stamped from `since` until before `until`, oldest
/// first. Rotated files last written before `since` are not opened.
pub fn prime(
    index: &DecisionIndex,
    log: &Path,
    since: SystemTime,
    until: SystemTime,
) -> Result<Primed, ReadError> {
    let files: Vec<_> = rotated_files(log)
        .into_iter()
        .filter(|f| {
            f == log
                || std::fs::metadata(f)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since)
        })
        .collect();
    if !files.iter().any(|f| f.exists()) {
        return Ok(Primed::default());
    }
    let mut out = Primed::default();
    read_lines_since(&files, since, &mut |line, ts| {
        if ts >= until {
            return;
        }
        out.lines += 1;
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            return;
        };
        out.noted += note(index, l, ts);
    })?;
    Ok(out)
}

/// Note one record; how many decisions it held.
fn note(index: &DecisionIndex, l: Line, ts: SystemTime) -> u64 {
    match l.frontend.as_str() {
        "socketmap" => {
            let (Some(domain), Some(tls), Some(level), Some(source), Some(reason)) =
                (l.domain, l.tls, l.level, l.source, l.reason)
            else {
                return 0;
            };
            let first = level.split_ascii_whitespace().next().unwrap_or("");
            let Ok(PolicyWord(word)) = first.parse() else {
                return 0;
            };
            let governing = GoverningDecision {
                by: DecidedBy::Socketmap,
                tls,
                level,
                source,
                rule: l.rule,
                reason,
            };
            index.note_earlier_lookup(&domain, word, governing, l.client_pid, ts);
            1
        }
        "policy" | "milter" => {
            let Some(queue_id) = l.queue_id.filter(|q| !q.is_empty()) else {
                return 0;
            };
            let by = if l.frontend == "milter" {
                DecidedBy::Milter
            } else {
                DecidedBy::Policy
            };
            let rcpts = match (l.recipients, l.recipient) {
                (Some(list), _) => list,
                (None, Some(recipient)) => {
                    let (Some(tls), Some(level), Some(source), Some(reason)) =
                        (l.tls, l.level, l.source, l.reason)
                    else {
                        return 0;
                    };
                    vec![RecipientDecision {
                        recipient: Some(recipient),
                        domain: l.domain,
                        tls,
                        level,
                        source,
                        rule: l.rule,
                        reason,
                        action: None,
                    }]
                }
                (None, None) => return 0,
            };
            index.note_earlier_message(&queue_id, by, &rcpts, ts);
            rcpts.len() as u64
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::engine::decision::{Decision, Level};
    use crate::log::record::{DecisionRecord, Detail, Lookup, LookupReply};
    use crate::outcomes::correlate::{IndexLimits, IndexObservers, LineFacts};
    use crate::outcomes::pipeline::Pipeline;

    const T0: u64 = 1_796_455_854; // 2026-12-05T07:30:54Z

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn lookup(domain: &str, level: Level, pid: Option<u32>, ts: u64) -> DecisionRecord {
        let mut r = DecisionRecord::new(
            None,
            Detail::Lookup(Lookup {
                map: Arc::from("tls_policy"),
                key: domain.to_string(),
                domain: Some(domain.to_string()),
                decision: Decision {
                    level,
                    policy: Arc::from(level.as_str()),
                    source: SourceKind::Static,
                    rule: Some(1),
                    matched: None,
                    reason: Arc::from("partner contract"),
                    ttl: Duration::from_secs(60),
                    raised: false,
                    temporary: false,
                    published: None,
                },
                reply: LookupReply::Ok,
                client_pid: pid,
            }),
        );
        r.head.ts = at(ts);
        r
    }

    /// Postfix 3.7's lines for one delivery over TLS, logged at T0.
    const DELIVERY: &str = "Dec 05 07:30:54 mx postfix/smtp[4932]: Trusted TLS connection established to mx-tls.sink.test[127.0.0.21]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256
Dec 05 07:30:54 mx postfix/smtp[4932]: 93EA59A2534: to=<f10@forced-tls.test>, relay=mx-tls.sink.test[127.0.0.21]:25, delay=0.06, delays=0.01/0.01/0.02/0.02, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued)
";

    fn judge(index: &DecisionIndex) -> Vec<(Option<DecidedBy>, String, String)> {
        let mut p = Pipeline::new(8192, Vec::new());
        p.set_clock(at(T0), 0);
        let mut out = Vec::new();
        let forced = |_: &str| None;
        p.feed(DELIVERY.as_bytes(), true, &mut |d, facts: LineFacts<'_>| {
            let j = index.judge(d, facts, &forced);
            let g = j.outcome.governing;
            out.push((
                g.as_ref().map(|g| g.by),
                g.map_or(String::new(), |g| g.level.to_string()),
                j.outcome.verdict.to_string(),
            ));
        });
        out
    }

    fn index() -> DecisionIndex {
        DecisionIndex::new(IndexLimits::default(), IndexObservers::default())
    }

    #[test]
    fn decisions_before_the_start_govern_what_is_read_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.jsonl");
        let mut f = std::fs::File::create(&log).unwrap();
        let milter = r#"{"ts":"2026-12-05T07:30:50Z","frontend":"milter","queue_id":"93EA59A2534","key":"","tls":"forced","reply":"accept","source":"static","reason":"x","sender":"s@x","recipients":[{"recipient":"f10@forced-tls.test","domain":"forced-tls.test","tls":"forced","level":"encrypt","source":"static","rule":1,"reason":"partner contract"}],"action":"accept"}"#.to_string();
        for line in [
            // Outside the window.
            serde_json::to_string(&lookup("forced-tls.test", Level::May, None, T0 - 7200)).unwrap(),
            milter,
            serde_json::to_string(&lookup("forced-tls.test", Level::Encrypt, None, T0 - 3))
                .unwrap(),
            "not json".to_string(),
            // After the start: noted live, not read back.
            serde_json::to_string(&lookup("forced-tls.test", Level::Secure, None, T0 + 60))
                .unwrap(),
        ] {
            writeln!(f, "{line}").unwrap();
        }
        drop(f);
        let ix = index();
        let got = prime(&ix, &log, at(T0 - 3600), at(T0 + 1)).unwrap();
        assert_eq!(got, Primed { lines: 2, noted: 2 });
        let want =
            |by, level: &str, verdict: &str| vec![(by, level.to_string(), verdict.to_string())];
        assert_eq!(
            judge(&ix),
            want(Some(DecidedBy::Socketmap), "encrypt", "encrypted")
        );
        // Only the milter's record: it governs by queue id.
        let ix = index();
        prime(&ix, &log, at(T0 - 5), at(T0 - 3)).unwrap();
        assert_eq!(
            judge(&ix),
            want(Some(DecidedBy::Milter), "encrypt", "encrypted")
        );
        // Nothing read back: no decision.
        assert_eq!(judge(&index()), want(None, "", "undecided"));
        // No decision log yet: nothing to note.
        let none = prime(&ix, &dir.path().join("none.jsonl"), at(0), at(T0)).unwrap();
        assert_eq!(none, Primed::default());
    }

    #[test]
    fn what_was_noted_since_the_start_stays() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.jsonl");
        std::fs::write(
            &log,
            format!(
                "{}\n",
                serde_json::to_string(&lookup("forced-tls.test", Level::May, Some(4932), T0 - 3))
                    .unwrap()
            ),
        )
        .unwrap();
        let ix = index();
        // A lookup by the same process after the start, noted live first.
        ix.note_record(&lookup(
            "forced-tls.test",
            Level::Encrypt,
            Some(4932),
            T0 - 1,
        ));
        prime(&ix, &log, at(T0 - 3600), at(T0 - 2)).unwrap();
        let got = judge(&ix);
        assert_eq!(got[0].1, "encrypt", "{got:?}");
    }
}
