//! Milter protocol errors over a real socket, in raw bytes: a zero-length
//! packet, an absurd length, an unknown command, a command without its
//! data, a command out of order. Each closes the connection (never a hang:
//! the MTA is not left waiting for a reply), with a log line and an
//! `errors_total{component="milter"}` count; many bad clients at once give
//! a few lines, not one each.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use common::fixtures::POLICY_BANK as POLICY;
use common::{Daemon, Options, WAIT, front_door_config};

fn metric(listen: &str, series: &str) -> f64 {
    let port = listen.rsplit_once(':').unwrap().1;
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

fn packet(cmd: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32 + 1).to_be_bytes().to_vec();
    v.push(cmd);
    v.extend_from_slice(payload);
    v
}

/// Read one packet: its command and payload.
fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
    let mut payload = vec![0; len - 1];
    s.read_exact(&mut payload).unwrap();
    (head[4], payload)
}

/// A connection with the options negotiated (protocol version 6, every
/// action, every stage with a reply).
fn negotiated(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut opts = 6u32.to_be_bytes().to_vec();
    opts.extend(0x1ffu32.to_be_bytes());
    opts.extend(0u32.to_be_bytes());
    s.write_all(&packet(b'O', &opts)).unwrap();
    assert_eq!(read_packet(&mut s).0, b'O', "negotiation answered");
    s
}

/// Whether the daemon closed the connection (end of file or a reset)
/// without sending anything; a timeout after [`WAIT`] is a hang.
fn closed_without_reply(s: &mut TcpStream) -> Result<(), String> {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("got {:?}", &b[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!("neither a reply nor a close within {WAIT:?}: {e}")),
    }
}

#[test]
fn every_protocol_error_closes_the_connection_with_a_line_and_a_count() {
    let text = front_door_config("milter", "") + "\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n";
    let d = Daemon::start_frontend(&text, POLICY, Options::default(), "milter");
    let addr = d
        .listening("milter")
        .strip_prefix("inet:")
        .unwrap()
        .to_string();
    let m = d.listening("metrics");
    let too_long = {
        let mut v = (1024u32 * 1024 + 1).to_be_bytes().to_vec();
        v.push(b'L');
        v
    };
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("zero length", b"\0\0\0\0".to_vec(), "zero_length_packet"),
        ("absurd length", too_long, "packet_too_long"),
        ("unknown command", packet(b'z', b"x\0"), "unknown_command"),
        ("RCPT without data", packet(b'R', b""), "empty_command"),
        (
            "RCPT before MAIL",
            packet(b'R', b"<b@bank.example>\0"),
            "command_out_of_order",
        ),
    ];
    for (what, bytes, kind) in &cases {
        let mark = d.mark();
        let mut s = negotiated(&addr);
        s.write_all(bytes).unwrap();
        closed_without_reply(&mut s).unwrap_or_else(|e| panic!("{what}: {e}"));
        let line = d.wait_for_line_since(mark, |l| l.contains("milter protocol error"));
        assert!(
            line.contains("WARN") && line.contains("closing connection"),
            "{what}: {line}"
        );
        let series = format!("tls_policyd_errors_total{{component=\"milter\",kind=\"{kind}\"}}");
        assert_eq!(metric(&m, &series), 1.0, "{what}");
    }

    // A well-behaved session is answered at every step meanwhile.
    let mut s = negotiated(&addr);
    s.write_all(&packet(b'M', b"<a@sender.example>\0")).unwrap();
    assert_eq!(read_packet(&mut s).0, b'c', "MAIL FROM answered: continue");
    s.write_all(&packet(b'R', b"<b@bank.example>\0")).unwrap();
    assert_eq!(read_packet(&mut s).0, b'c', "RCPT TO answered: continue");
    s.write_all(&packet(b'Q', b"")).unwrap();

    // Many bad clients at once: every one counted, a few lines only.
    let mark = d.mark();
    let bad: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = negotiated(&addr);
            s.write_all(b"\0\0\0\0").unwrap();
            s
        })
        .collect();
    for mut s in bad {
        closed_without_reply(&mut s).unwrap();
    }
    let series = "tls_policyd_errors_total{component=\"milter\",kind=\"zero_length_packet\"}";
    assert_eq!(metric(&m, series), 41.0);
    let lines = d
        .stderr_since(mark)
        .lines()
        .filter(|l| l.contains("milter protocol error"))
        .count();
    assert!(lines <= 10, "{lines} lines for 40 bad clients");
}
