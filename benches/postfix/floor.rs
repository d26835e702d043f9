//! The floor: bare responders that hold the same conversations with
//! Postfix as tls-policyd's front doors and do nothing else.
//!
//! The `floor-*` configurations point Postfix at these instead of the
//! daemon, with the deployment's main.cf lines otherwise unchanged. What
//! they cost Postfix's throughput, and the CPU they use per message, is
//! what the protocol exchanges themselves cost on this machine: no
//! decision, no record, no metrics. The difference to the daemon's
//! figures is what tls-policyd's own work adds.
//!
//! - socketmap: every request is answered `OK may`;
//! - policy server: every request is answered `action=DUNNO`;
//! - milter: the same negotiation as the daemon's (protocol steps,
//!   replies left out, macros asked for, the header action), a reply
//!   wherever the daemon replies, and at end of message the same trace
//!   header added.
//!
//! Same runtime as the daemon (tokio, one thread), so the comparison
//! isolates the work done per request. The bench binary runs this when
//! [`FLOOR_ENV`] is set, inside the benchmark's network namespace.

use std::io::Read;
use std::process::{Child, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::common::netns::Netns;
use crate::deployment::Sockets;

use indymilter::{MacroStage, ProtoOpts};
use tls_policyd::frontends::{milter, netstring};

/// Set in the environment of the re-executed bench binary to make it the
/// floor responders; the arguments are `socketmap policy milter`
/// addresses (`inet:HOST:PORT` or `unix:PATH`).
pub const FLOOR_ENV: &str = "TLS_POLICYD_BENCH_FLOOR";

/// The floor responders' endpoints (see `floor.rs`), in the order of
/// the deployment's endpoints (`lab.rs`): loopback TCP, or unix sockets under the queue directory.
pub const FLOOR_ENDPOINTS: [(&str, &str); 3] = [
    ("inet:127.0.0.1:10037", "tls-policyd/floor-socketmap.sock"),
    ("inet:127.0.0.1:10038", "tls-policyd/floor-policy.sock"),
    ("inet:127.0.0.1:10039", "tls-policyd/floor-milter.sock"),
];

/// The floor responders, in the namespace, on [`FLOOR_ENDPOINTS`].
pub fn start(ns: &Netns, sockets: &Sockets) -> Child {
    let addrs: Vec<String> = FLOOR_ENDPOINTS
        .iter()
        .map(|(inet, path)| match sockets {
            Sockets::Inet => inet.to_string(),
            Sockets::Unix(queue) => format!("unix:{}", queue.join(path).display()),
        })
        .collect();
    let mut child = ns
        .cmd(std::env::current_exe().expect("the bench binary"))
        .args(&addrs)
        .env(FLOOR_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the floor responders");
    let mut err = child.stderr.take().expect("floor stderr");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"floor: listening\n") {
        match err.read(&mut b) {
            Ok(1) => line.push(b[0]),
            _ => panic!(
                "the floor responders did not start: {}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    child
}

/// The trace header the deployment's milter adds.
const TRACE_HEADER: &str = "X-TLS-Policy";

// Milter protocol (Sendmail's mfdef.h): the header action, and the
// "no reply" options the responder looks at (the rest of the negotiation
// is the daemon's own, see `wanted_protocol`).
const SMFIF_ADDHDRS: u32 = 0x01;
const SMFIP_NR_HDR: u32 = 0x80;
const SMFIP_NR_CONN: u32 = 0x1000;
const SMFIP_NR_HELO: u32 = 0x2000;
const SMFIP_NR_MAIL: u32 = 0x4000;
const SMFIP_NR_RCPT: u32 = 0x8000;
const SMFIP_NR_DATA: u32 = 0x10000;
const SMFIP_NR_UNKN: u32 = 0x20000;
const SMFIP_NR_EOH: u32 = 0x40000;
const SMFIP_NR_BODY: u32 = 0x80000;
/// Longest packet read (as indymilter).
const MAX_PACKET: usize = 1024 * 1024;

/// The steps and replies the daemon's milter asks for with the
/// deployment's `refuse = "off"`: its own function, so the floor follows
/// any change to it.
fn wanted_protocol(unix: bool) -> u32 {
    milter::protocol_options(ProtoOpts::all(), false, unix).bits()
}

/// The macros the daemon's milter asks for, by stage number (SMFIM_*).
fn wanted_macros() -> impl Iterator<Item = (u32, &'static str)> {
    milter::REQUESTED_MACROS.into_iter().map(|(stage, names)| {
        let n = match stage {
            MacroStage::Connect => 0,
            MacroStage::Helo => 1,
            MacroStage::Mail => 2,
            MacroStage::Rcpt => 3,
            MacroStage::Data => 4,
            MacroStage::Eom => 5,
            MacroStage::Eoh => 6,
        };
        (n, names)
    })
}

/// Run the floor responders until killed.
pub fn main(args: &[String]) {
    let [socketmap, policy, milter] = args else {
        panic!("floor: want three addresses (socketmap, policy, milter), got {args:?}");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("floor: runtime");
    rt.block_on(async {
        let s = serve(socketmap.clone(), Door::Socketmap);
        let p = serve(policy.clone(), Door::Policy);
        let m = serve(milter.clone(), Door::Milter);
        eprintln!("floor: listening");
        tokio::join!(s, p, m);
    });
}

#[derive(Clone, Copy)]
enum Door {
    Socketmap,
    Policy,
    Milter,
}

async fn serve(addr: String, door: Door) {
    if let Some(path) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path).expect("floor: bind unix socket");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .expect("floor: socket mode");
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(conversation(s, door, true));
        }
    } else {
        let a = addr.strip_prefix("inet:").unwrap_or(&addr);
        let l = tokio::net::TcpListener::bind(a)
            .await
            .expect("floor: bind TCP");
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(conversation(s, door, false));
        }
    }
}

async fn conversation<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, door: Door, unix: bool) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut milter = MilterState { noreply: 0, unix };
    loop {
        let used = match door {
            Door::Socketmap => socketmap_replies(&buf, &mut out),
            Door::Policy => policy_replies(&buf, &mut out),
            Door::Milter => milter_replies(&buf, &mut out, &mut milter),
        };
        let Some(used) = used else { return };
        buf.drain(..used);
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        buf.reserve(4096);
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// `OK may` for every complete request; the bytes used, `None` to close.
fn socketmap_replies(buf: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let mut at = 0;
    loop {
        match netstring::decode(&buf[at..], netstring::MAX_QUERY_LEN) {
            Ok(Some(f)) => {
                netstring::encode(b"OK may", out);
                at += f.consumed;
            }
            Ok(None) => return Some(at),
            Err(_) => return None,
        }
    }
}

/// `action=DUNNO` for every complete request (ended by an empty line).
fn policy_replies(buf: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let mut at = 0;
    while let Some(end) = buf[at..].windows(2).position(|w| w == b"\n\n") {
        out.extend_from_slice(b"action=DUNNO\n\n");
        at += end + 2;
    }
    (buf.len() - at <= 64 * 1024).then_some(at)
}

struct MilterState {
    /// Negotiated protocol flags.
    noreply: u32,
    unix: bool,
}

fn packet(out: &mut Vec<u8>, cmd: u8, data: &[u8]) {
    let len = u32::try_from(data.len() + 1).expect("short packet");
    out.extend_from_slice(&len.to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(data);
}

/// Replies where the daemon's milter replies; `None` to close.
fn milter_replies(buf: &[u8], out: &mut Vec<u8>, st: &mut MilterState) -> Option<usize> {
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes(buf[at..at + 4].try_into().ok()?) as usize;
        if len == 0 || len > MAX_PACKET {
            return None;
        }
        if buf.len() - at - 4 < len {
            break;
        }
        let cmd = buf[at + 4];
        let data = &buf[at + 5..at + 4 + len];
        let step_reply = |flag: u32| st.noreply & flag == 0;
        match cmd {
            b'O' => {
                let offered = u32::from_be_bytes(data.get(8..12)?.try_into().ok()?);
                let proto = wanted_protocol(st.unix) & offered;
                st.noreply = proto;
                let mut d = Vec::with_capacity(128);
                d.extend_from_slice(&6u32.to_be_bytes());
                d.extend_from_slice(&SMFIF_ADDHDRS.to_be_bytes());
                d.extend_from_slice(&proto.to_be_bytes());
                for (stage, names) in wanted_macros() {
                    d.extend_from_slice(&stage.to_be_bytes());
                    d.extend_from_slice(names.as_bytes());
                    d.push(0);
                }
                packet(out, b'O', &d);
            }
            b'D' | b'A' => {}
            b'Q' => return None,
            b'C' if step_reply(SMFIP_NR_CONN) => packet(out, b'c', &[]),
            b'H' if step_reply(SMFIP_NR_HELO) => packet(out, b'c', &[]),
            b'M' if step_reply(SMFIP_NR_MAIL) => packet(out, b'c', &[]),
            b'R' if step_reply(SMFIP_NR_RCPT) => packet(out, b'c', &[]),
            b'T' if step_reply(SMFIP_NR_DATA) => packet(out, b'c', &[]),
            b'L' if step_reply(SMFIP_NR_HDR) => packet(out, b'c', &[]),
            b'N' if step_reply(SMFIP_NR_EOH) => packet(out, b'c', &[]),
            b'B' if step_reply(SMFIP_NR_BODY) => packet(out, b'c', &[]),
            b'U' if step_reply(SMFIP_NR_UNKN) => packet(out, b'c', &[]),
            b'E' => {
                let mut h = Vec::with_capacity(64);
                h.extend_from_slice(TRACE_HEADER.as_bytes());
                h.push(0);
                h.extend_from_slice(b"floor");
                h.push(0);
                packet(out, b'h', &h);
                packet(out, b'c', &[]);
            }
            _ => {}
        }
        at += 4 + len;
    }
    Some(at)
}
