//! systemd readiness notification (`sd_notify(3)`): `READY=1` once every
//! listener is bound, `RELOADING=1` … `READY=1` around a reload,
//! `STOPPING=1` on shutdown, and `STATUS=` lines that `systemctl status`
//! shows. Without `NOTIFY_SOCKET` (not started by systemd with
//! `Type=notify`) every call does nothing.

use std::fmt;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

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
        self.send(&format!("READY=1\nSTATUS={}", status_text(status)));
    }

    /// A reload starts. `READY=1` (from [`Notifier::ready`]) ends it.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            monotonic_usec()
        ));
    }

    /// Shutdown starts.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// A status line only.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", status_text(status)));
    }

    fn send(&self, message: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(message.as_bytes(), addr) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
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

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
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
    fn status_is_one_bounded_line() {
        assert_eq!(status_text("a\nb\tc"), "a b c");
        let long = "é".repeat(MAX_STATUS);
        let t = status_text(&long);
        assert!(t.len() <= MAX_STATUS && t.len() >= MAX_STATUS - 1);
    }
}
