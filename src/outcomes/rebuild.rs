//! After a restart, the index learns again what the decision log says was
//! decided lately: socketmap lookups within the hop window, and the
//! RCPT-time decisions of messages that may still be in Postfix's queue.
//! So a delivery after the restart (a deferred message retried, an smtp
//! process that looked its policy up before) is joined as it would have
//! been without it.
//!
//! Read: the end of the decision log (at most `max_bytes` of it, taken
//! from the newest rotated file `PATH.1` too when the live file is
//! shorter), line by line, bounded; lines that are not records of a door
//! are skipped.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::engine::decision::{Decision, PolicyWord, SourceKind, Tls};
use crate::engine::recipient::RecipientDecision;
use crate::log::record::DecidedBy;

use super::correlate::DecisionIndex;

/// The most of the decision log read back at start.
pub const MAX_REBUILD_BYTES: u64 = 64 * 1024 * 1024;
/// Longest record line read back; longer ones are skipped.
const MAX_RECORD_LINE: usize = 256 * 1024;

/// What a rebuild read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildStats {
    pub lines: u64,
    pub lookups: u64,
    pub messages: u64,
    /// Not a record, or a record too old to govern anything.
    pub skipped: u64,
}

#[derive(Deserialize)]
struct Rec {
    ts: String,
    frontend: String,
    queue_id: Option<String>,
    domain: Option<String>,
    client_pid: Option<u32>,
    level: Option<String>,
    source: Option<SourceKind>,
    rule: Option<u32>,
    reason: Option<String>,
    recipient: Option<String>,
    tls: Option<Tls>,
    recipients: Option<Vec<Rcpt>>,
}

#[derive(Deserialize)]
struct Rcpt {
    recipient: Option<String>,
    domain: Option<String>,
    tls: Tls,
    level: String,
    source: SourceKind,
    rule: Option<u32>,
    reason: String,
}

/// Feed `index` from the decision log at `path` (and `path.1`), records
/// within `window` of `now`.
pub fn rebuild(
    index: &DecisionIndex,
    path: &Path,
    max_bytes: u64,
    window: Duration,
    now: SystemTime,
) -> io::Result<RebuildStats> {
    let mut stats = RebuildStats::default();
    let live_len = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    let rotated = PathBuf::from(rotated);
    if live_len < max_bytes && rotated.exists() {
        read_tail(
            index,
            &rotated,
            max_bytes - live_len,
            window,
            now,
            &mut stats,
        )?;
    }
    if live_len > 0 {
        read_tail(index, path, max_bytes, window, now, &mut stats)?;
    }
    Ok(stats)
}

fn read_tail(
    index: &DecisionIndex,
    path: &Path,
    max_bytes: u64,
    window: Duration,
    now: SystemTime,
    stats: &mut RebuildStats,
) -> io::Result<()> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    f.seek(SeekFrom::Start(start))?;
    let mut r = BufReader::with_capacity(256 * 1024, f.take(len - start));
    let mut line = Vec::new();
    if start > 0 {
        // The first line is cut.
        r.read_until(b'\n', &mut line)?;
        line.clear();
    }
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_RECORD_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        stats.lines += 1;
        if line.len() > MAX_RECORD_LINE {
            stats.skipped += 1;
            // The rest of the over-long line.
            let mut rest = Vec::new();
            r.read_until(b'\n', &mut rest)?;
            continue;
        }
        match note(index, &line, window, now) {
            Some(true) => stats.lookups += 1,
            Some(false) => stats.messages += 1,
            None => stats.skipped += 1,
        }
    }
    Ok(())
}

/// Note one record line: `Some(true)` a lookup, `Some(false)` a
/// message's recipients, `None` skipped.
fn note(index: &DecisionIndex, line: &[u8], window: Duration, now: SystemTime) -> Option<bool> {
    let rec: Rec = serde_json::from_slice(line).ok()?;
    let ts = humantime::parse_rfc3339(&rec.ts).ok()?;
    if now.duration_since(ts).is_ok_and(|age| age > window) {
        return None;
    }
    match rec.frontend.as_str() {
        "socketmap" => {
            let domain = rec.domain.as_deref()?;
            // `level` is written with an `OK` reply only: a NOTFOUND left
            // the choice to Postfix's own setting.
            let level_text = rec.level?;
            let PolicyWord(level) = first_word(&level_text).parse().ok()?;
            let d = Decision {
                level,
                policy: Arc::from(level_text.as_str()),
                source: rec.source?,
                rule: rec.rule,
                matched: None,
                reason: Arc::from(rec.reason.unwrap_or_default().as_str()),
                ttl: Duration::ZERO,
                raised: false,
                temporary: false,
                published: None,
            };
            index.note_hop(domain, rec.client_pid, &d, ts);
            Some(true)
        }
        "policy" | "milter" => {
            let queue_id = rec.queue_id.as_deref().filter(|q| !q.is_empty())?;
            let by = if rec.frontend == "milter" {
                DecidedBy::Milter
            } else {
                DecidedBy::Policy
            };
            let rcpts: Vec<RecipientDecision> = match rec.recipients {
                Some(list) => list.into_iter().map(recipient).collect(),
                // A policy-server RCPT record: one recipient.
                None => vec![RecipientDecision {
                    recipient: rec.recipient,
                    domain: rec.domain,
                    tls: rec.tls?,
                    level: Arc::from(rec.level?.as_str()),
                    source: rec.source?,
                    rule: rec.rule,
                    reason: Arc::from(rec.reason.unwrap_or_default().as_str()),
                    action: None,
                }],
            };
            index.note_message(queue_id, by, &rcpts, ts);
            Some(false)
        }
        _ => None,
    }
}

fn recipient(r: Rcpt) -> RecipientDecision {
    RecipientDecision {
        recipient: r.recipient,
        domain: r.domain,
        tls: r.tls,
        level: Arc::from(r.level.as_str()),
        source: r.source,
        rule: r.rule,
        reason: Arc::from(r.reason.as_str()),
        action: None,
    }
}

fn first_word(s: &str) -> &str {
    s.split_ascii_whitespace().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::Level;
    use crate::log::record::{
        DecisionRecord, Detail, Envelope, Lookup, LookupReply, Message, MessageDoor,
    };
    use crate::outcomes::correlate::{IndexLimits, IndexObservers};

    fn decision(level: Level) -> Decision {
        Decision {
            level,
            policy: Arc::from(format!("{level} match=mx.x.test").as_str()),
            source: SourceKind::Static,
            rule: Some(4),
            matched: None,
            reason: Arc::from("r"),
            ttl: Duration::from_secs(1),
            raised: false,
            temporary: false,
            published: None,
        }
    }

    fn line(rec: &DecisionRecord) -> String {
        serde_json::to_string(rec).unwrap() + "\n"
    }

    #[test]
    fn the_index_learns_back_what_the_log_holds() {
        let now = SystemTime::now();
        let lookup = |domain: &str, reply, ts| {
            let mut r = DecisionRecord::new(
                None,
                Detail::Lookup(Lookup {
                    map: Arc::from("tls_policy"),
                    key: domain.into(),
                    domain: Some(domain.into()),
                    decision: decision(Level::Secure),
                    reply,
                    client_pid: Some(77),
                }),
            );
            r.head.ts = ts;
            r
        };
        let summary = crate::engine::recipient::MessageSummary {
            recipients: vec![RecipientDecision {
                recipient: Some("a@q.test".into()),
                domain: Some("q.test".into()),
                tls: Tls::Forced,
                level: Arc::from("encrypt"),
                source: SourceKind::Static,
                rule: Some(2),
                reason: Arc::from("r"),
                action: None,
            }],
            dropped: 0,
            cap: 10,
            sender_rule: None,
            empty_reason: "none",
        };
        let msg = DecisionRecord::new(
            Some("QID1".into()),
            Detail::Message(Message::new(
                summary,
                Envelope::default(),
                MessageDoor::Milter(Box::default()),
            )),
        );
        let window = Duration::from_secs(3600);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let old = lookup(
            "old.test",
            LookupReply::Ok,
            now - window - Duration::from_secs(1),
        );
        std::fs::write(
            dir.path().join("decisions.jsonl.1"),
            line(&old) + &line(&msg),
        )
        .unwrap();
        let text = String::new()
            + &line(&lookup("x.test", LookupReply::Ok, now))
            + &line(&lookup("nf.test", LookupReply::NotFound, now))
            + "not json\n"
            + "{\"ts\":\"2026-12-05T00:00:00Z\",\"frontend\":\"delivery\"}\n"
            + &"x".repeat(MAX_RECORD_LINE + 10)
            + "\n"
            + &line(&lookup("y.test", LookupReply::Ok, now));
        std::fs::write(&path, text).unwrap();
        let ix = DecisionIndex::new(IndexLimits::default(), IndexObservers::default());
        let stats = rebuild(&ix, &path, MAX_REBUILD_BYTES, window, now).unwrap();
        assert_eq!(
            stats,
            RebuildStats {
                lines: 8,
                lookups: 2,
                messages: 1,
                skipped: 5
            }
        );
        assert_eq!(ix.sizes(), (2, 1, 1));
        // A tail that cuts a line: the cut line is skipped, not misread.
        let ix = DecisionIndex::new(IndexLimits::default(), IndexObservers::default());
        let last = line(&lookup("y.test", LookupReply::Ok, now)).len() as u64;
        let stats = rebuild(&ix, &path, last + 5, window, now).unwrap();
        assert_eq!((stats.lines, stats.lookups), (1, 1));
        assert_eq!(ix.sizes(), (1, 1, 0));
    }
}
