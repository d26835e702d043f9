//! Where the store's connection goes ([`Target`]): the address in `url`,
//! or the master the sentinels name; with the database, the user and
//! password, and TLS (`ca_file`, a client certificate).

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    RedisResult, TlsCertificates,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::{Address, SharedConfig, read_password, read_pem, sentinel_addr};
use super::sentinel::{SentinelSetup, Sentinels, check_master};
use crate::metrics::Metrics;

/// With sentinels, the longest wait between two attempts to connect.
pub const SENTINEL_RECHECK: Duration = Duration::from_secs(1);

/// Why the store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("key `shared.url`: {0}")]
    Url(String),
    #[error("key `shared.password_file`: {0}")]
    Password(String),
    #[error("key `shared.sentinel_password_file`: {0}")]
    SentinelPassword(String),
    #[error("key `shared.{0}`: {1}")]
    Tls(&'static str, String),
    #[error("key `shared.sentinels`: {0}")]
    Sentinels(String),
}

/// Where connections go.
pub struct Target {
    how: How,
    command_timeout: Duration,
    /// With sentinels: the master connected to.
    master: Mutex<Option<String>>,
    /// Woken by a failure: the sentinels are asked again.
    recheck: Notify,
}

enum How {
    /// The address in `url`.
    Fixed(Client),
    /// The master the sentinels name, reached with these settings.
    Sentinel {
        sentinels: Box<Sentinels>,
        /// The address part is replaced by the master's.
        template: ConnectionInfo,
        tls: Option<TlsCertificates>,
    },
}

impl Target {
    /// From the section: the password and PEM files are read now.
    pub fn new(config: &SharedConfig) -> Result<Target, SharedError> {
        let (addr, db) = match config.address().map_err(SharedError::Url)? {
            Address::Tcp {
                host,
                port,
                db,
                tls: false,
            } => (ConnectionAddr::Tcp(host, port), db),
            Address::Tcp {
                host,
                port,
                db,
                tls: true,
            } => {
                // The client builds its TLS settings with the process's
                // default provider.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let addr = ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    tls_params: None,
                };
                (addr, db)
            }
            Address::Unix { path, db } => (ConnectionAddr::Unix(path), db),
        };
        let tls = tls_certificates(config)?;
        let info = addr
            .into_connection_info()
            .map_err(|e| SharedError::Url(e.to_string()))?;
        let mut redis = info.redis_settings().clone().set_db(db);
        if let Some(p) = &config.password_file {
            let password = read_password(p).map_err(SharedError::Password)?;
            redis = redis.set_password(password);
        }
        if let Some(u) = &config.username {
            redis = redis.set_username(u);
        }
        let info = info.set_redis_settings(redis);
        let how = if config.uses_sentinels() {
            let addrs = config
                .sentinels
                .iter()
                .map(|s| sentinel_addr(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(SharedError::Sentinels)?;
            let password = match &config.sentinel_password_file {
                Some(p) => Some(read_password(p).map_err(SharedError::SentinelPassword)?),
                None => None,
            };
            let is_tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
            let sentinels = Box::new(Sentinels::new(SentinelSetup {
                addrs,
                master_name: config.master_name.clone().unwrap_or_default(),
                username: config.sentinel_username.clone(),
                password,
                tls: is_tls.then(|| {
                    tls.clone().unwrap_or(TlsCertificates {
                        client_tls: None,
                        root_cert: None,
                    })
                }),
                connect_timeout: config.connect_timeout,
                command_timeout: config.command_timeout,
            }));
            How::Sentinel {
                sentinels,
                template: info,
                tls,
            }
        } else {
            let client = match &tls {
                Some(certs) => Client::build_with_tls(info, certs.clone()),
                None => Client::open(info),
            }
            .map_err(|e| SharedError::Url(e.to_string()))?;
            How::Fixed(client)
        };
        Ok(Target {
            how,
            command_timeout: config.command_timeout,
            master: Mutex::new(None),
            recheck: Notify::new(),
        })
    }

    /// With sentinels: the master (`host:port`) connected to.
    pub fn master(&self) -> Option<String> {
        self.master
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A connection was made (to `master`, with sentinels): see
    /// [`note_master`].
    pub fn note_master(&self, master: Option<String>, metrics: &Metrics) -> bool {
        note_master(&self.master, master, metrics)
    }

    /// A command failed: wake [`Target::failed`].
    pub fn wake(&self) {
        self.recheck.notify_waiters();
    }

    /// Wait for a failure (`true`: one came, or `down` says the store is
    /// down already) or for `shutdown` (`false`).
    pub async fn failed(&self, down: impl Fn() -> bool, shutdown: &CancellationToken) -> bool {
        let notified = self.recheck.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if down() {
            return true;
        }
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = notified => true,
        }
    }

    /// Whether connections follow the sentinels (asked again after a
    /// failure).
    pub fn follows_sentinels(&self) -> bool {
        matches!(self.how, How::Sentinel { .. })
    }

    /// When to connect again after a failed attempt: after the breaker's
    /// back-off, but with sentinels at least every [`SENTINEL_RECHECK`]
    /// (they name the new master within seconds of a failover).
    pub fn next_try(&self, backoff: Duration) -> Duration {
        match self.how {
            How::Fixed(_) => backoff,
            How::Sentinel { .. } => backoff.min(SENTINEL_RECHECK),
        }
    }

    /// The longest one [`Target::connect`] may take.
    pub fn budget(&self, connect_timeout: Duration) -> Duration {
        let base = connect_timeout.saturating_mul(3);
        match &self.how {
            How::Fixed(_) => base,
            How::Sentinel { sentinels, .. } => base
                .saturating_add(sentinels.budget())
                .saturating_add(self.command_timeout),
        }
    }

    /// Connect: to `url`, or to the master the sentinels name (checked
    /// with `ROLE`), whose `host:port` comes back too.
    pub async fn connect(
        &self,
        config: ConnectionManagerConfig,
    ) -> RedisResult<(ConnectionManager, Option<String>)> {
        match &self.how {
            How::Fixed(client) => Ok((
                ConnectionManager::new_with_config(client.clone(), config).await?,
                None,
            )),
            How::Sentinel {
                sentinels,
                template,
                tls,
            } => {
                let (host, port) = sentinels.master().await?;
                let shown = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                let client = master_client(template, tls.as_ref(), host, port)?;
                let mut conn = ConnectionManager::new_with_config(client, config).await?;
                check_master(&mut conn, &shown, self.command_timeout).await?;
                Ok((conn, Some(shown)))
            }
        }
    }
}

impl Target {
    /// A pub/sub connection to where commands go: `url`, or the master
    /// the sentinels name now.
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        let client = match &self.how {
            How::Fixed(client) => client.clone(),
            How::Sentinel {
                sentinels,
                template,
                tls,
            } => {
                let (host, port) = sentinels.master().await?;
                master_client(template, tls.as_ref(), host, port)?
            }
        };
        client.get_async_pubsub().await
    }
}

/// A client for the master at `host:port`, with the settings of
/// `template` (TLS or not, database, user, password).
fn master_client(
    template: &ConnectionInfo,
    tls: Option<&TlsCertificates>,
    host: String,
    port: u16,
) -> RedisResult<Client> {
    let addr = match template.addr() {
        ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    let info = template.clone().set_addr(addr);
    match tls {
        Some(certs) => Client::build_with_tls(info, certs.clone()),
        None => Client::open(info),
    }
}

/// The TLS settings when `ca_file` or a client certificate is set:
/// the CA file's certificates replace the public roots.
fn tls_certificates(config: &SharedConfig) -> Result<Option<TlsCertificates>, SharedError> {
    let read =
        |key: &'static str, p: &std::path::Path| read_pem(p).map_err(|e| SharedError::Tls(key, e));
    let root_cert = match &config.ca_file {
        Some(p) => Some(read("ca_file", p)?),
        None => None,
    };
    let client_tls = match (&config.client_cert_file, &config.client_key_file) {
        (Some(c), Some(k)) => Some(ClientTlsConfig {
            client_cert: read("client_cert_file", c)?,
            client_key: read("client_key_file", k)?,
        }),
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// The `errors_total{component="shared"}` kind of a failure.
pub fn error_kind(e: &RedisError) -> &'static str {
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || e.code().is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH")
    {
        "auth"
    } else if e.code() == Some("READONLY") {
        "readonly"
    } else if e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel {
        "sentinel"
    } else {
        "unavailable"
    }
}

/// Remember the master connected to; a change is logged and counted.
/// Returns whether this is a first connection or a new master (`false`:
/// the same master again).
fn note_master(slot: &Mutex<Option<String>>, master: Option<String>, metrics: &Metrics) -> bool {
    let mut held = slot.lock().unwrap_or_else(|e| e.into_inner());
    let new_target = held.is_none() || *held != master;
    if let (Some(old), Some(new)) = (held.as_deref(), master.as_deref())
        && old != new
    {
        metrics.shared_master_changed();
        tracing::warn!(
            from = old,
            to = new,
            "shared store master changed (a failover): writes go to the new master"
        );
    }
    *held = master;
    new_target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_change_is_counted_once() {
        let m = Metrics::new();
        let slot = Mutex::new(None);
        assert!(note_master(&slot, Some("127.0.0.1:1".into()), &m));
        assert!(!note_master(&slot, Some("127.0.0.1:1".into()), &m));
        assert_eq!(m.shared_master_changes(), 0);
        assert!(note_master(&slot, Some("127.0.0.1:2".into()), &m));
        assert_eq!(m.shared_master_changes(), 1);
        // A fixed address: always a first connection.
        let fixed = Mutex::new(None);
        assert!(note_master(&fixed, None, &m));
        assert_eq!(m.shared_master_changes(), 1);
        assert_eq!(slot.lock().unwrap().as_deref(), Some("127.0.0.1:2"));
    }

    #[test]
    fn error_kinds() {
        let e = RedisError::from((redis::ErrorKind::AuthenticationFailed, "x"));
        assert_eq!(error_kind(&e), "auth");
        let e = RedisError::from((redis::ErrorKind::MasterNameNotFoundBySentinel, "x"));
        assert_eq!(error_kind(&e), "sentinel");
        let e = RedisError::from((redis::ErrorKind::Io, "x"));
        assert_eq!(error_kind(&e), "unavailable");
        let server = |reply: &[u8]| {
            redis::parse_redis_value(reply)
                .unwrap()
                .extract_error()
                .unwrap_err()
        };
        let e = server(b"-READONLY You can't write against a read only replica.\r\n");
        assert_eq!(error_kind(&e), "readonly");
        let e = server(b"-WRONGPASS invalid username-password pair\r\n");
        assert_eq!(error_kind(&e), "auth");
    }

    #[test]
    fn sentinel_targets_need_no_url() {
        let mut c = SharedConfig::new("");
        c.sentinels = vec!["127.0.0.1:26379".into(), "[::1]:26380".into()];
        c.master_name = Some("mymaster".into());
        assert_eq!(c.validate(), Ok(()));
        let t = Target::new(&c).unwrap();
        assert!(t.follows_sentinels());
        assert!(t.budget(Duration::from_secs(1)) > Duration::from_secs(5));
        assert_eq!(t.next_try(Duration::from_secs(30)), SENTINEL_RECHECK);
        assert_eq!(
            t.next_try(Duration::from_millis(250)),
            Duration::from_millis(250)
        );
        assert!(
            !Target::new(&SharedConfig::new("redis://h/0"))
                .unwrap()
                .follows_sentinels()
        );
    }
}
