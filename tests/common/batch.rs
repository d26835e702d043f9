//! Mail in bulk for a Postfix under test: one message per recipient over
//! one SMTP connection, paced, with the queue id Postfix gave each.
//! (swaks starts a process per message; this keeps a steady flow for as
//! long as a test needs to do something while mail moves.)

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::WAIT;
use super::postfix::{CLIENT_HELO, SENDER};

/// One SMTP client connection.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn new(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        stream.set_write_timeout(Some(WAIT)).expect("write timeout");
        let writer = stream.try_clone().expect("clone the stream");
        Client {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// The next reply, all its lines.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .expect("read an SMTP reply");
            assert!(
                n >= 4 && line.is_char_boundary(3),
                "short SMTP reply {line:?} after {all:?}"
            );
            all.push_str(&line);
            if line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }

    /// Send `text` (a command, or message data ending in `.`) and check
    /// that the reply starts with `code`.
    fn send(&mut self, text: &str, code: &str) -> String {
        self.writer
            .write_all(format!("{text}\r\n").as_bytes())
            .expect("write to the SMTP server");
        let r = self.reply();
        assert!(r.starts_with(code), "{text:?} -> {r}");
        r
    }
}

/// Send one message to each of `rcpts` over `stream` (connected to an
/// smtpd of the instance), from [`SENDER`], waiting `gap` after each;
/// the queue id of each, in order. Panics on any reply but the expected
/// one.
pub fn send_each(stream: TcpStream, rcpts: &[String], gap: Duration) -> Vec<String> {
    let mut c = Client::new(stream);
    let banner = c.reply();
    assert!(banner.starts_with("220"), "{banner}");
    c.send(&format!("EHLO {CLIENT_HELO}"), "250");
    let mut ids = Vec::new();
    for (i, rcpt) in rcpts.iter().enumerate() {
        c.send(&format!("MAIL FROM:<{SENDER}>"), "250");
        c.send(&format!("RCPT TO:<{rcpt}>"), "250");
        c.send("DATA", "354");
        let done = c.send(
            &format!(
                "Subject: batch message {i}\r\nTo: <{rcpt}>\r\n\r\nMessage {i} of a batch.\r\n."
            ),
            "250",
        );
        let id = done
            .split_once("queued as ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no queue id in {done:?}"));
        ids.push(id.to_string());
        std::thread::sleep(gap);
    }
    c.send("QUIT", "221");
    ids
}
