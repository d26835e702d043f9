//! systemd readiness notification (`sd_notify(3)`): `READY=1` once every
//! listener is bound, `RELOADING=1` with `MONOTONIC_USEC=` … `READY=1`
//! around a reload (as `Type=notify-reload` needs), `STOPPING=1` on
//! shutdown, and `STATUS=` lines that `systemctl status` shows. Without
//! `NOTIFY_SOCKET` (not started by systemd with `Type=notify`) every call
//! does nothing.
//!
//! The assignments are [`sd_notify::NotifyState`]s. They go out as one
//! datagram per notification, each assignment on a line of its own, to
//! the socket `NOTIFY_SOCKET` names as it was at start: a path, or
//! `@name` for a socket in the abstract namespace. A value that cannot
//! name a socket is found at start ([`Notifier::problem`]), not at the
//! first notification. (`sd_notify::notify` itself reads the variable
//! anew each time, takes `@name` for a file name and ends every line with
//! a newline, so the sending stays here.)

use std::fmt;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use sd_notify::NotifyState;

/// The environment variable systemd sets.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Longest `STATUS=` text sent, in bytes.
pub const MAX_STATUS: usize = 1024;

/// Where notifications go.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Why `NOTIFY_SOCKET` could not be used, if it was set.
    problem: Option<String>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.target.is_some())
            .finish()
    }
}

impl Notifier {
    /// From `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket.
    pub fn from_env() -> Notifier {
        match std::env::var_os(NOTIFY_SOCKET) {
            None => Notifier::disabled(),
            Some(v) => match v.to_str() {
                Some(s) => Notifier::to(s),
                None => Notifier {
                    target: None,
                    problem: Some(format!("{NOTIFY_SOCKET} is not UTF-8")),
                },
            },
        }
    }

    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            problem: None,
        }
    }

    /// Notify the socket named like `NOTIFY_SOCKET` names it.
    pub fn to(socket: &str) -> Notifier {
        match open(socket) {
            Ok(t) => Notifier {
                target: Some(t),
                problem: None,
            },
            Err(e) => Notifier {
                target: None,
                problem: Some(format!("{NOTIFY_SOCKET}={socket:?}: {e}")),
            },
        }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Why notifications are off although `NOTIFY_SOCKET` was set.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Every listener is bound; requests are being served.
    pub fn ready(&self, status: &str) {
        let status = status_text(status);
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// A reload starts. `READY=1` (from [`Notifier::ready`]) ends it.
    pub fn reloading(&self) {
        // systemd refuses a RELOADING=1 without the time it was sent.
        let now = NotifyState::monotonic_usec_now().unwrap_or(NotifyState::MonotonicUsec(0));
        self.send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]);
    }

    /// Shutdown starts.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// A status line only.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(&status_text(status))]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(message(states).as_bytes(), addr) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// One datagram: the assignments, one a line.
fn message(states: &[NotifyState<'_>]) -> String {
    states
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line, at most [`MAX_STATUS`] bytes.
fn status_text(s: &str) -> String {
    let mut t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if t.len() > MAX_STATUS {
        let mut end = MAX_STATUS;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t.truncate(end);
    }
    t
}

fn open(socket: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else if socket.starts_with('/') {
        SocketAddr::from_pathname(socket)?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path or @abstract name",
        ));
    };
    Ok((UnixDatagram::unbound()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = Notifier::to(path.to_str().unwrap());
        assert!(n.enabled(), "{:?}", n.problem());
        n.ready("serving socketmap\non inet:127.0.0.1:1");
        assert_eq!(
            recv(&sock),
            "READY=1\nSTATUS=serving socketmap on inet:127.0.0.1:1"
        );
        n.reloading();
        let r = recv(&sock);
        assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{r}");
        let usec: u64 = r
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tls-policyd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = Notifier::to(&format!("@{name}"));
        n.status("x");
        assert_eq!(recv(&sock), "STATUS=x");
    }

    #[test]
    fn unusable_socket_names() {
        for bad in ["relative/path", "", &format!("/{}", "a".repeat(200))] {
            let n = Notifier::to(bad);
            assert!(!n.enabled());
            assert!(n.problem().unwrap().contains(NOTIFY_SOCKET), "{bad}");
            n.ready("nothing happens");
        }
        assert!(!Notifier::disabled().enabled());
    }

    #[test]
    fn one_assignment_a_line() {
        assert_eq!(
            message(&[NotifyState::Ready, NotifyState::Status("a b")]),
            "READY=1\nSTATUS=a b"
        );
        assert_eq!(
            message(&[NotifyState::MonotonicUsec(7)]),
            "MONOTONIC_USEC=7"
        );
    }

    #[test]
    fn status_is_one_bounded_line() {
        assert_eq!(status_text("a\nb\tc"), "a b c");
        let long = "é".repeat(MAX_STATUS);
        let t = status_text(&long);
        assert!(t.len() <= MAX_STATUS && t.len() >= MAX_STATUS - 1);
    }
}
