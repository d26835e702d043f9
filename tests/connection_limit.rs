//! A front door at its connection limit: Postfix's clients keep their
//! connections open between requests, so the door closes the one idle the
//! longest for a new one instead of leaving the new lookup waiting; the
//! limit reached is logged and counted.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use common::fixtures::POLICY_BANK as POLICY;
use common::{Client, Daemon, WAIT, config_listening, front_door_config, policy_request};

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

const METRICS: &str = "\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n";

#[test]
fn socketmap_at_its_limit_closes_the_longest_idle_connection_for_a_new_lookup() {
    let text = config_listening("inet:127.0.0.1:0", "policy", "max_connections = 3") + METRICS;
    let d = Daemon::start(&text, POLICY);
    let m = d.listening("metrics");
    // Three connections, each having asked once: the first idle longest.
    let mut open: Vec<Client> = (0..3).map(|_| d.client()).collect();
    for c in &mut open {
        assert_eq!(c.query("tls_policy", "bank.example"), "OK encrypt");
    }
    let limit = "tls_policyd_errors_total{component=\"socketmap\",kind=\"connection_limit\"}";
    let closed =
        "tls_policyd_errors_total{component=\"socketmap\",kind=\"idle_connection_closed\"}";
    assert_eq!(metric(&m, limit), 0.0);
    let mark = d.mark();

    // A fourth is answered at once, not after an idle timeout.
    let mut new = d.client();
    assert_eq!(new.query("tls_policy", "bank.example"), "OK encrypt");
    assert!(open[0].is_closed(), "the longest-idle connection is closed");
    for (i, c) in open.iter_mut().enumerate().skip(1) {
        assert_eq!(
            c.query("tls_policy", "bank.example"),
            "OK encrypt",
            "connection {i} stays open"
        );
    }
    let line = d.wait_for_line_since(mark, |l| l.contains("connection limit reached"));
    assert!(
        line.contains("socketmap") && line.contains("longest-idle"),
        "{line}"
    );
    assert_eq!(metric(&m, limit), 1.0);
    assert_eq!(metric(&m, closed), 1.0);

    // Again: the fourth has now been idle the longest (the others asked
    // after it).
    let mut newer = d.client();
    assert_eq!(newer.query("tls_policy", "bank.example"), "OK encrypt");
    assert!(
        new.is_closed(),
        "the next longest-idle connection is closed"
    );
    assert_eq!(open[1].query("tls_policy", "bank.example"), "OK encrypt");
    assert_eq!(metric(&m, limit), 2.0);
}

fn ask(stream: &mut BufReader<TcpStream>, request: &str) -> String {
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stream.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        if line == "\n" {
            return answer;
        }
        answer.push_str(&line);
    }
}

/// Whether the daemon closed the connection within [`WAIT`]: end of file
/// or a reset; a timeout means it is open.
fn closed(stream: &mut BufReader<TcpStream>) -> bool {
    let mut b = [0u8; 1];
    match stream.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn policy_server_at_its_limit_closes_the_longest_idle_connection() {
    let text = front_door_config("policy_server", "max_connections = 2") + METRICS;
    let d = Daemon::start_frontend(&text, POLICY, Default::default(), "policy");
    let addr = d.listening("policy");
    let addr = addr.strip_prefix("inet:").unwrap().to_string();
    let m = d.listening("metrics");
    let connect = || {
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        BufReader::new(s)
    };
    let request = policy_request("RCPT", "a@sender.example", "b@bank.example", "i1", "");
    let mut open: Vec<_> = (0..2).map(|_| connect()).collect();
    for c in &mut open {
        assert!(ask(c, &request).starts_with("action="));
    }
    let mut new = connect();
    assert!(ask(&mut new, &request).starts_with("action="));
    assert!(
        closed(&mut open[0]),
        "the longest-idle connection is closed"
    );
    assert!(ask(&mut open[1], &request).starts_with("action="));
    let series = "tls_policyd_errors_total{component=\"policy\",kind=\"connection_limit\"}";
    assert_eq!(metric(&m, series), 1.0);
}
