//! The policy delegation front door of the real binary: configured from
//! `[policy_server]`, reloaded on SIGHUP, stopped on SIGTERM. The client
//! writes the protocol by hand on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use common::fixtures::POLICY_BANK as POLICY;
use common::{Daemon, Options, WAIT, front_door_config, policy_request};

fn config(extra: &str) -> String {
    front_door_config("policy_server", extra)
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(address: &str) -> Client {
        let addr = address.strip_prefix("inet:").expect("an inet listener");
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// Send one request; the action Postfix would read.
    fn ask(&mut self, state: &str, recipient: &str, instance: &str) -> String {
        let req = policy_request(
            state,
            "alice@src.example",
            recipient,
            instance,
            "some_future_attribute=1\n",
        );
        self.writer.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let mut blank = String::new();
        self.reader.read_line(&mut blank).unwrap();
        assert_eq!(blank, "\n", "reply ends with an empty line");
        line.trim_end()
            .strip_prefix("action=")
            .unwrap_or_else(|| panic!("not an action line: {line:?}"))
            .to_string()
    }
}

#[test]
fn policy_server_answers_reloads_and_stops() {
    let d = Daemon::start_frontend(&config(""), POLICY, Options::default(), "policy");
    let mut c = Client::connect(d.address());
    assert_eq!(c.ask("RCPT", "bob@bank.example", "i1"), "DUNNO");
    // No trace header configured: DATA is DUNNO.
    assert_eq!(c.ask("DATA", "bob@bank.example", "i1"), "DUNNO");
    let recs = d.wait_for_decisions(1);
    assert_eq!(recs[0]["frontend"], "policy");
    assert_eq!(recs[0]["recipient"], "bob@bank.example");
    assert_eq!(recs[0]["tls"], "forced");
    assert_eq!(recs[0]["level"], "encrypt");
    assert_eq!(recs[0]["sender"], "alice@src.example");
    assert_eq!(recs[0]["instance"], "i1");

    // SIGHUP applies a changed [policy_server] to open connections.
    d.write_config(&config("trace_header = \"X-TLS-Policy\""));
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    d.wait_for_line_since(mark, |l| l.contains("reloaded"));
    assert_eq!(
        c.ask("DATA", "bob@bank.example", "i1"),
        "PREPEND X-TLS-Policy: bank.example=forced (encrypt, static rule 1)"
    );

    // A broken config keeps the running one.
    d.write_config(&config("trace_header = \"X TLS\""));
    let mark = d.mark();
    d.signal(libc::SIGHUP);
    let line = d.wait_for_line_since(mark, |l| l.contains("reload failed"));
    assert!(line.contains("policy_server.trace_header"), "{line}");
    assert_eq!(
        c.ask("DATA", "carol@other.example", "i2"),
        "PREPEND X-TLS-Policy: other.example=opportunistic (may, default)"
    );

    // SIGTERM: the daemon stops cleanly.
    let mut d = d;
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}
