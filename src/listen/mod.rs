//! Postfix-style listener addresses (`inet:127.0.0.1:10027`,
//! `inet:[::1]:10027`, `unix:/run/tls-policyd/socketmap.sock`) and the
//! sockets behind them.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, TcpStream, UnixListener};

mod accept;
mod unix_stream;

pub use accept::{ACCEPT_BACKOFF, Admission, Drain, Expiry, IdleTimer, Opened, serve};
pub use unix_stream::ReadWoken;

/// Where a front door listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Inet(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("inet:") {
            rest.parse::<SocketAddr>()
                .map(ListenAddr::Inet)
                .map_err(|_| inet_problem(s, rest))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: unix: needs a socket path"));
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "{s:?}: expected inet:ADDRESS:PORT or unix:/PATH (Postfix style)"
            ))
        }
    }
}

/// What is wrong with `inet:REST`, which is not an IP address and port.
fn inet_problem(s: &str, rest: &str) -> String {
    let example = "e.g. inet:127.0.0.1:10027 or inet:[::1]:10027";
    let Some((host, port)) = rest.rsplit_once(':').filter(|_| !rest.ends_with(']')) else {
        return format!("{s:?}: expected inet:ADDRESS:PORT, with a port, {example}");
    };
    if port.is_empty() {
        return format!("{s:?}: the port is missing, {example}");
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return format!("{s:?}: port {port:?} is not a number (0 to 65535)");
    }
    if port.parse::<u16>().is_err() {
        return format!("{s:?}: port {port} is out of range (0 to 65535)");
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        // An IPv6 address without brackets.
        return format!("{s:?}: write an IPv6 address in brackets, inet:[{bare}]:{port}");
    }
    format!(
        "{s:?}: {host:?} is not an IP address (expected inet:ADDRESS:PORT with an IP address, \
         not a host name, {example})"
    )
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Inet(a) => write!(f, "inet:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Mode and ownership for a unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketOptions {
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

impl SocketOptions {
    /// From a section's `socket_mode` (octal text, checked by the
    /// section's validation), `socket_owner` and `socket_group`.
    pub fn of(mode: &Option<String>, owner: &Option<String>, group: &Option<String>) -> Self {
        SocketOptions {
            mode: mode.as_deref().and_then(|m| parse_mode(m).ok()),
            owner: owner.clone(),
            group: group.clone(),
        }
    }
}

/// Connections a front door serves at once unless its section says.
pub fn default_max_connections() -> usize {
    1024
}

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// An accepted connection.
pub enum Accepted {
    Tcp(TcpStream),
    /// Woken for reading only: see [`ReadWoken`].
    Unix(ReadWoken),
}

impl Listener {
    /// Bind. Must be called inside a tokio runtime.
    pub fn bind(addr: &ListenAddr, opts: &SocketOptions) -> io::Result<Listener> {
        match addr {
            ListenAddr::Inet(a) => {
                let std = std::net::TcpListener::bind(a)?;
                std.set_nonblocking(true)?;
                defer_accept(&std)?;
                Ok(Listener::Tcp(TcpListener::from_std(std)?))
            }
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let l = UnixListener::bind(path)?;
                set_socket_access(path, opts)?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        Ok(match self {
            Listener::Tcp(l) => ListenAddr::Inet(l.local_addr()?),
            Listener::Unix(_, p) => ListenAddr::Unix(p.clone()),
        })
    }

    /// Accept one connection; the peer is described for log lines.
    pub async fn accept(&self) -> io::Result<(Accepted, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                // Request→reply traffic of a few dozen bytes: never wait
                // for Nagle.
                s.set_nodelay(true)?;
                Ok((Accepted::Tcp(s), peer.to_string()))
            }
            Listener::Unix(l, p) => {
                let (s, _) = l.accept().await?;
                Ok((
                    Accepted::Unix(ReadWoken::new(s)?),
                    format!("unix:{}", p.display()),
                ))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How long the kernel holds a TCP connection whose client has not sent
/// anything yet before handing it over anyway (`TCP_DEFER_ACCEPT`).
const DEFER_ACCEPT_SECS: libc::c_int = 5;

/// Every client of the front doors speaks first (Postfix's socketmap,
/// policy and milter clients all send a request as soon as they are
/// connected), so the listener is woken once, when the first request is
/// there, rather than for the connection and then again for its first
/// bytes: one wake-up less per connection (the milter gets a new one for
/// every SMTP session).
fn defer_accept(l: &std::net::TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs = DEFER_ACCEPT_SECS;
    // SAFETY: a valid socket descriptor, an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A socket file left by a previous run is removed; one that a live
/// process still answers on, or a path that is not a socket, is an error.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by a running process", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

fn set_socket_access(path: &Path, opts: &SocketOptions) -> io::Result<()> {
    if let Some(mode) = opts.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    let uid = match &opts.owner {
        Some(name) => Some(user_id(name)?),
        None => None,
    };
    let gid = match &opts.group {
        Some(name) => Some(group_id(name)?),
        None => None,
    };
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid)?;
    }
    Ok(())
}

fn user_id(name: &str) -> io::Result<u32> {
    let user = nix::unistd::User::from_name(name).map_err(io::Error::from)?;
    Ok(user.ok_or_else(|| not_found("user", name))?.uid.as_raw())
}

fn group_id(name: &str) -> io::Result<u32> {
    let group = nix::unistd::Group::from_name(name).map_err(io::Error::from)?;
    Ok(group.ok_or_else(|| not_found("group", name))?.gid.as_raw())
}

fn not_found(what: &str, name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no {what} named {name:?}"))
}

/// Parse an octal mode as written in configs (`"0660"`, `"660"`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!("{s:?} is not an octal file mode like \"0660\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that has connected but sent nothing is not handed to
    /// the accept loop; its first bytes bring it.
    #[tokio::test]
    async fn tcp_connections_reach_the_accept_loop_with_their_first_request() {
        use std::io::Write;
        let l = Listener::bind(
            &"inet:127.0.0.1:0".parse().unwrap(),
            &SocketOptions::default(),
        )
        .unwrap();
        let ListenAddr::Inet(addr) = l.local_addr().unwrap() else {
            panic!("not inet");
        };
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), l.accept()).await;
        assert!(early.is_err(), "accepted before the client spoke");
        c.write_all(b"3:x y,").unwrap();
        let (conn, _) = tokio::time::timeout(std::time::Duration::from_secs(10), l.accept())
            .await
            .expect("accepted once the client spoke")
            .unwrap();
        let Accepted::Tcp(mut s) = conn else {
            panic!("not tcp");
        };
        let mut got = [0u8; 6];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"3:x y,");
    }

    #[test]
    fn parses_postfix_style_addresses() {
        assert_eq!(
            "inet:127.0.0.1:10027".parse::<ListenAddr>().unwrap(),
            ListenAddr::Inet("127.0.0.1:10027".parse().unwrap())
        );
        let v6 = "inet:[::1]:0".parse::<ListenAddr>().unwrap();
        assert_eq!(v6.to_string(), "inet:[::1]:0");
        assert_eq!(
            "unix:/run/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        for bad in [
            "127.0.0.1:10027",
            "inet:localhost:10027",
            "inet:127.0.0.1",
            "unix:",
            "tcp:1.2.3.4:5",
        ] {
            let e = bad.parse::<ListenAddr>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn inet_errors_say_what_is_wrong() {
        for (bad, want) in [
            (
                "inet:127.0.0.1:99999",
                "port 99999 is out of range (0 to 65535)",
            ),
            ("inet:127.0.0.1:smtp", "port \"smtp\" is not a number"),
            ("inet:127.0.0.1:", "the port is missing"),
            ("inet:127.0.0.1", "with a port"),
            ("inet:[::1]", "with a port"),
            (
                "inet:::1:25",
                "write an IPv6 address in brackets, inet:[::1]:25",
            ),
            ("inet:localhost:25", "\"localhost\" is not an IP address"),
        ] {
            let e = bad.parse::<ListenAddr>().unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
            assert!(
                !want.contains("IP address") || e.contains("not a host name"),
                "{e}"
            );
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("rw-rw----").is_err());
    }

    #[tokio::test]
    async fn unix_socket_mode_and_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let opts = SocketOptions {
            mode: Some(0o600),
            ..Default::default()
        };
        let addr = ListenAddr::Unix(path.clone());
        let l = Listener::bind(&addr, &opts).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        // A second daemon must not steal a live socket.
        let e = Listener::bind(&addr, &opts).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // A stale socket (nobody listening) is replaced.
        std::mem::forget(l);
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join("t.sock")).unwrap();
        drop(stale);
        let l2 = Listener::bind(&ListenAddr::Unix(dir.path().join("t.sock")), &opts);
        assert!(l2.is_ok());
        // A regular file is never removed.
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(Listener::bind(&ListenAddr::Unix(file.clone()), &opts).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
