//! Decision records and the writer that puts them on disk off the hot path.
//!
//! Front doors hand a [`DecisionRecord`] to [`DecisionLog::log`], which only
//! queues it; a dedicated thread serialises records as JSON lines, writes
//! them in batches and flushes. A full queue (the disk stalled) drops the
//! record and counts it rather than slowing lookups; the count is reported
//! in the operational log.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::engine::decision::{Decision, SourceKind, Tls};
use crate::engine::recipient::RecipientDecision;

/// Records that may wait for the writer before new ones are dropped.
pub const LOG_QUEUE_CAPACITY: usize = 1 << 16;
/// The writer pauses this long after each batch so records arrive in
/// batches instead of waking it once per lookup (a front door queueing a
/// record while the writer sleeps wakes nobody). A record reaches the file
/// at most this late; stopping the daemon writes what is queued.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// One decision, as written to the decision log.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    #[serde(serialize_with = "rfc3339")]
    pub ts: SystemTime,
    pub frontend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    /// Socketmap name the lookup came in on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<Arc<str>>,
    /// The key exactly as received.
    pub key: String,
    /// The key's domain or host name, normalised (lower case, A-labels, no
    /// trailing dot): `example.com` for `.example.com` and `host` for
    /// `[host]:25`. Absent when the key was not a destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub tls: Tls,
    /// The exact text sent to Postfix after `OK` (`secure match=…`);
    /// absent when the answer was `NOTFOUND` or `TEMP`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<Arc<str>>,
    /// The socketmap reply code: `OK`, `NOTFOUND` or `TEMP`.
    pub reply: &'static str,
    pub source: SourceKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<Arc<str>>,
    pub reason: Arc<str>,
    /// Set when a forced map raised a weaker answer to forced.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub raised: bool,
    /// Set when the source could not decide now (a failed DNSSEC lookup
    /// for a DANE domain): the socketmap answered `TEMP`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub temporary: bool,
    /// MTA-STS: the id of the policy that decided (from the TXT record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<Arc<str>>,
    /// MTA-STS: the mode of that policy (`enforce`, `testing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_mode: Option<&'static str>,
    /// Policy server: Postfix's `instance` attribute (one per message
    /// within an SMTP session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Policy server: the envelope sender (`""` for the null sender).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Policy server: the recipient the decision is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Policy server: the SMTP client's IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    /// Policy server, one record per message: every recipient's decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<RecipientDecision>>,
    /// Policy server: the action answered (`DUNNO`,
    /// `DEFER_IF_PERMIT 4.7.10 …`, `FILTER smtp-tls-forced:`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Policy server: the `[[sender_rule]]` that forces TLS for this
    /// message (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_rule: Option<u32>,
    /// Milter: the SMTP client's host name as the MTA resolved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Milter: the name the client gave in HELO/EHLO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helo_name: Option<String>,
    /// Milter: the MTA's own host name (macro `j`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mta: Option<String>,
    /// Milter: the receiving service (macro `{daemon_name}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_name: Option<String>,
    /// Milter: the inbound connection's TLS; absent for plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_tls: Option<InboundTls>,
    /// Milter: the SASL-authenticated user (macro `{auth_authen}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// Milter: the message's `Message-ID` header, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Milter: the message carries the RFC 8689 `TLS-Required: No` header.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_required_no: bool,
    /// Milter: the sender asked for REQUIRETLS (RFC 8689) in MAIL FROM.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
}

/// The TLS of the connection a message came in on (milter macros
/// `{tls_version}`, `{cipher}`, `{cipher_bits}`, `{cert_subject}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InboundTls {
    /// `TLSv1.3`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
    /// The client certificate's subject, when the client presented one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
}

impl DecisionRecord {
    /// A record for a decision; front doors fill in the rest.
    pub fn new(frontend: &'static str, key: &str, decision: &Decision) -> DecisionRecord {
        DecisionRecord {
            ts: SystemTime::now(),
            frontend,
            queue_id: None,
            map: None,
            key: key.to_string(),
            domain: None,
            tls: decision.tls(),
            level: Some(decision.policy.clone()),
            reply: "OK",
            source: decision.source,
            rule: decision.rule,
            matched: decision.matched.clone(),
            reason: decision.reason.clone(),
            raised: decision.raised,
            temporary: decision.temporary,
            policy_id: decision
                .published
                .as_ref()
                .and_then(|p| p.policy_id.clone()),
            policy_mode: decision.published.as_ref().and_then(|p| p.mode),
            instance: None,
            sender: None,
            recipient: None,
            client_address: None,
            recipients: None,
            action: None,
            sender_rule: None,
            client_name: None,
            helo_name: None,
            mta: None,
            daemon_name: None,
            inbound_tls: None,
            auth_user: None,
            message_id: None,
            tls_required_no: false,
            requiretls: false,
        }
    }
}

fn rfc3339<S: Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*ts))
}

/// Where decision records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `-` is standard output; anything else a file path.
    pub fn from_setting(s: &std::path::Path) -> Target {
        if s.as_os_str() == "-" {
            Target::Stdout
        } else {
            Target::File(s.to_path_buf())
        }
    }

    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Target::Stdout => Box::new(io::stdout()),
            Target::File(p) => Box::new(open_append(p)?),
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("standard output"),
            Target::File(p) => write!(f, "{}", p.display()),
        }
    }
}

fn open_append(p: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

enum Msg {
    /// Boxed: the queue pre-allocates every slot, so slots stay small.
    Record(Box<DecisionRecord>),
    /// Reopen (logrotate) or switch to another target.
    Reopen(Target),
    /// Write out everything queued, then answer.
    Flush(mpsc::Sender<()>),
    /// Write out everything queued and end the thread.
    Stop,
}

/// Handle to the decision log. Cheap to share behind an `Arc`.
pub struct DecisionLog {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl DecisionLog {
    /// Open the target (so a bad path fails at start-up) and start the
    /// writer thread.
    pub fn start(target: Target) -> io::Result<DecisionLog> {
        let out = target.open()?;
        let (tx, rx) = mpsc::sync_channel(LOG_QUEUE_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer(rx, target, out, d))?;
        Ok(DecisionLog {
            tx,
            dropped,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue a record. Never blocks.
    pub fn log(&self, record: DecisionRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Reopen the file (after logrotate moved it) or switch target.
    pub fn reopen(&self, target: Target) {
        let _ = self.tx.send(Msg::Reopen(target));
    }

    /// Wait until every record queued before this call is written.
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }

    /// Write out what is queued and stop the writer thread. Records logged
    /// after this are counted as dropped.
    pub fn close(&self) {
        let Some(t) = self.thread.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        let _ = self.tx.send(Msg::Stop);
        let _ = t.join();
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer(
    rx: Receiver<Msg>,
    mut target: Target,
    out: Box<dyn Write + Send>,
    dropped: Arc<AtomicU64>,
) {
    let mut out = BufWriter::with_capacity(256 * 1024, out);
    let mut failing = false;
    let mut reported_drops = 0u64;
    let mut acks = Vec::new();
    let mut stop = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => {
                    let res = serde_json::to_writer(&mut out, &r)
                        .map_err(io::Error::from)
                        .and_then(|()| out.write_all(b"\n"));
                    note_write(&mut failing, &target, res);
                }
                Msg::Reopen(new) => {
                    note_write(&mut failing, &target, out.flush());
                    match new.open() {
                        Ok(w) => {
                            out = BufWriter::with_capacity(256 * 1024, w);
                            if new != target {
                                tracing::info!(log = %new, "decision log moved");
                            }
                            target = new;
                        }
                        Err(e) => tracing::warn!(log = %new, error = %e,
                            "cannot reopen decision log; still writing to the old file"),
                    }
                }
                Msg::Flush(ack) => acks.push(ack),
                Msg::Stop => stop = true,
            }
            next = if stop { None } else { rx.try_recv().ok() };
        }
        note_write(&mut failing, &target, out.flush());
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        let d = dropped.load(Ordering::Relaxed);
        if d != reported_drops {
            tracing::warn!(
                dropped = d - reported_drops,
                total = d,
                "decision log could not keep up; records dropped"
            );
            reported_drops = d;
        }
        if stop {
            break;
        }
        std::thread::sleep(BATCH_INTERVAL);
    }
}

/// Log a write failure once when it starts and once when it ends.
fn note_write(failing: &mut bool, target: &Target, res: io::Result<()>) {
    match res {
        Err(e) if !*failing => {
            *failing = true;
            tracing::error!(log = %target, error = %e, "cannot write decision log");
        }
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!(log = %target, "decision log writable again");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::Level;

    fn decision() -> Decision {
        Decision {
            level: Level::Secure,
            policy: Arc::from("secure match=mx.bank.example"),
            source: SourceKind::Static,
            rule: Some(2),
            matched: Some(Arc::from(".bank.example")),
            reason: Arc::from("PCI \"partner\""),
            ttl: Duration::from_secs(1),
            raised: false,
            temporary: false,
            published: None,
        }
    }

    #[test]
    fn record_is_one_json_line_with_documented_fields() {
        let mut r = DecisionRecord::new("socketmap", "X.Bank.Example", &decision());
        r.ts = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456);
        r.domain = Some("x.bank.example".into());
        r.map = Some(Arc::from("tls_policy"));
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2025-11-24T16:00:00.123456Z");
        assert_eq!(v["frontend"], "socketmap");
        assert_eq!(v["key"], "X.Bank.Example");
        assert_eq!(v["domain"], "x.bank.example");
        assert_eq!(v["tls"], "forced");
        assert_eq!(v["level"], "secure match=mx.bank.example");
        assert_eq!(v["reply"], "OK");
        assert_eq!(v["source"], "static");
        assert_eq!(v["rule"], 2);
        assert_eq!(v["reason"], "PCI \"partner\"");
        assert!(v.get("queue_id").is_none());
        assert!(v.get("raised").is_none());
        for absent in [
            "policy_id",
            "policy_mode",
            "instance",
            "sender",
            "recipient",
            "client_address",
            "recipients",
            "action",
            "sender_rule",
            "client_name",
            "helo_name",
            "mta",
            "daemon_name",
            "inbound_tls",
            "auth_user",
            "message_id",
            "tls_required_no",
            "requiretls",
        ] {
            assert!(v.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn published_policy_fields() {
        let mut d = decision();
        d.source = SourceKind::MtaSts;
        d.published = Some(Arc::new(crate::engine::decision::Published {
            policy_id: Some(Arc::from("20240101T000000")),
            mode: Some("enforce"),
        }));
        let v = serde_json::to_value(DecisionRecord::new("socketmap", "sts.example", &d)).unwrap();
        assert_eq!(v["source"], "mta-sts");
        assert_eq!(v["policy_id"], "20240101T000000");
        assert_eq!(v["policy_mode"], "enforce");
    }

    #[test]
    fn policy_server_fields() {
        let mut r = DecisionRecord::new("policy", "", &decision());
        r.queue_id = Some("4ABC".into());
        r.instance = Some("1.2.3".into());
        r.sender = Some(String::new());
        r.client_address = Some("192.0.2.1".into());
        r.action = Some("DUNNO".into());
        r.sender_rule = Some(1);
        r.recipients = Some(vec![RecipientDecision {
            recipient: Some("a@bank.example".into()),
            domain: Some("bank.example".into()),
            tls: Tls::Forced,
            level: Arc::from("encrypt"),
            source: SourceKind::Static,
            rule: Some(1),
            reason: Arc::from("why"),
            action: None,
        }]);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["queue_id"], "4ABC");
        assert_eq!(v["instance"], "1.2.3");
        assert_eq!(v["sender"], "", "the null sender is written, not left out");
        assert_eq!(v["client_address"], "192.0.2.1");
        assert_eq!(v["action"], "DUNNO");
        assert_eq!(v["sender_rule"], 1);
        let rcpt = &v["recipients"][0];
        assert_eq!(rcpt["recipient"], "a@bank.example");
        assert_eq!(rcpt["domain"], "bank.example");
        assert_eq!(rcpt["tls"], "forced");
        assert_eq!(rcpt["level"], "encrypt");
        assert_eq!(rcpt["source"], "static");
        assert_eq!(rcpt["rule"], 1);
        assert!(rcpt.get("action").is_none());
    }

    #[test]
    fn milter_fields() {
        let mut r = DecisionRecord::new("milter", "", &decision());
        r.client_name = Some("client.example".into());
        r.helo_name = Some("client.example".into());
        r.mta = Some("mx.example".into());
        r.daemon_name = Some("smtpd".into());
        r.inbound_tls = Some(InboundTls {
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_256_GCM_SHA384".into()),
            bits: Some(256),
            cert_subject: None,
        });
        r.auth_user = Some("alice".into());
        r.message_id = Some("<1@client.example>".into());
        r.tls_required_no = true;
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["frontend"], "milter");
        assert_eq!(v["client_name"], "client.example");
        assert_eq!(v["helo_name"], "client.example");
        assert_eq!(v["mta"], "mx.example");
        assert_eq!(v["daemon_name"], "smtpd");
        assert_eq!(v["inbound_tls"]["version"], "TLSv1.3");
        assert_eq!(v["inbound_tls"]["cipher"], "TLS_AES_256_GCM_SHA384");
        assert_eq!(v["inbound_tls"]["bits"], 256);
        assert!(v["inbound_tls"].get("cert_subject").is_none());
        assert_eq!(v["auth_user"], "alice");
        assert_eq!(v["message_id"], "<1@client.example>");
        assert_eq!(v["tls_required_no"], true);
        assert!(v.get("requiretls").is_none());
    }

    #[test]
    fn writer_appends_flushes_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let log = DecisionLog::start(Target::File(path.clone())).unwrap();
        for i in 0..1000 {
            log.log(DecisionRecord::new(
                "socketmap",
                &format!("d{i}.example"),
                &decision(),
            ));
        }
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1000);
        // logrotate: move the file away, reopen, keep writing.
        let rotated = dir.path().join("decisions.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen(Target::File(path.clone()));
        log.log(DecisionRecord::new(
            "socketmap",
            "after.example",
            &decision(),
        ));
        log.close();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(new.lines().count(), 1);
        assert!(new.contains("after.example"));
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            1000
        );
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn unopenable_target_fails_at_start() {
        let e = DecisionLog::start(Target::File("/nonexistent-dir/x.jsonl".into()));
        assert!(e.is_err());
    }
}
