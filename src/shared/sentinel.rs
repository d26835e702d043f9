//! Finding the master through Redis Sentinel (`sentinels`,
//! `master_name`).
//!
//! The sentinels are asked in turn (`SENTINEL get-master-addr-by-name`),
//! the one that answered last first; the first answer naming an address
//! wins. The store then connects there and checks with `ROLE` that it is
//! the master (a sentinel may not know of a failover yet). After a failure
//! the store asks again, so writes follow a failover to the new master.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError,
    RedisResult, TlsCertificates, Value,
};

/// Longest address accepted in a sentinel's answer, in bytes.
const MAX_ANSWER_HOST: usize = 253;

/// The sentinels and how to reach them.
pub struct Sentinels {
    addrs: Vec<(String, u16)>,
    master_name: String,
    username: Option<String>,
    password: Option<String>,
    /// TLS to the sentinels (a `rediss://` url), with the same roots.
    tls: Option<TlsCertificates>,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// The sentinel asked first: the one that answered last.
    first: AtomicUsize,
}

/// How to reach the sentinels.
pub struct SentinelSetup {
    pub addrs: Vec<(String, u16)>,
    pub master_name: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsCertificates>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

impl Sentinels {
    pub fn new(s: SentinelSetup) -> Sentinels {
        Sentinels {
            addrs: s.addrs,
            master_name: s.master_name,
            username: s.username,
            password: s.password,
            tls: s.tls,
            connect_timeout: s.connect_timeout,
            command_timeout: s.command_timeout,
            first: AtomicUsize::new(0),
        }
    }

    /// The longest a [`Sentinels::master`] may take: every sentinel once.
    pub fn budget(&self) -> Duration {
        let each = self.connect_timeout.saturating_add(self.command_timeout);
        each.saturating_mul(u32::try_from(self.addrs.len()).unwrap_or(u32::MAX))
    }

    /// The master's address, from the first sentinel that knows it.
    pub async fn master(&self) -> RedisResult<(String, u16)> {
        let n = self.addrs.len();
        let start = self.first.load(Ordering::Relaxed) % n.max(1);
        let mut problems = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            let (host, port) = &self.addrs[i];
            match self.ask(host, *port).await {
                Ok(Some(addr)) => {
                    self.first.store(i, Ordering::Relaxed);
                    return Ok(addr);
                }
                Ok(None) => problems.push(format!(
                    "{host}:{port} knows no master named {:?}",
                    self.master_name
                )),
                Err(e) => problems.push(format!("{host}:{port}: {e}")),
            }
        }
        Err(RedisError::from((
            ErrorKind::MasterNameNotFoundBySentinel,
            "no sentinel named the master",
            problems.join("; "),
        )))
    }

    /// One sentinel's answer: the master's address, `None` when it does
    /// not monitor `master_name`.
    async fn ask(&self, host: &str, port: u16) -> RedisResult<Option<(String, u16)>> {
        let addr = match &self.tls {
            None => ConnectionAddr::Tcp(host.to_string(), port),
            Some(_) => ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            },
        };
        let info = addr.into_connection_info()?;
        let mut settings = info.redis_settings().clone();
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        if let Some(u) = &self.username {
            settings = settings.set_username(u);
        }
        let info = info.set_redis_settings(settings);
        let client = match &self.tls {
            None => Client::open(info)?,
            Some(certs) => Client::build_with_tls(info, certs.clone())?,
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let mut conn = tokio::time::timeout(
            self.connect_timeout.saturating_add(self.command_timeout),
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| timeout("connect"))??;
        let answer: Value = tokio::time::timeout(
            self.command_timeout,
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master_name)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| timeout("SENTINEL get-master-addr-by-name"))??;
        parse_master_addr(&answer)
    }
}

fn timeout(what: &'static str) -> RedisError {
    RedisError::from((ErrorKind::Io, "no answer in time", what.to_string()))
}

/// `SENTINEL get-master-addr-by-name`'s answer: `[host, port]`, or nil.
pub fn parse_master_addr(v: &Value) -> RedisResult<Option<(String, u16)>> {
    let bad = |why: &str| {
        RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unusable sentinel answer",
            why.to_string(),
        ))
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match v {
        Value::Nil => Ok(None),
        Value::Array(items) if items.len() == 2 => {
            let host = text(&items[0]).ok_or_else(|| bad("the host is not text"))?;
            if host.is_empty()
                || host.len() > MAX_ANSWER_HOST
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
            {
                return Err(bad("the host is not a host name or address"));
            }
            let port = text(&items[1])
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("the port is not 1 to 65535"))?;
            Ok(Some((host, port)))
        }
        _ => Err(bad("not [host, port]")),
    }
}

/// Check that `conn` is a master (`ROLE`): a replica, or a master the
/// sentinels demoted, is refused.
pub async fn check_master(
    conn: &mut ConnectionManager,
    addr: &str,
    command_timeout: Duration,
) -> RedisResult<()> {
    let role: Value = tokio::time::timeout(command_timeout, redis::cmd("ROLE").query_async(conn))
        .await
        .map_err(|_| timeout("ROLE"))??;
    let first = match &role {
        Value::Array(items) => items.first(),
        _ => None,
    };
    let name = match first {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => "unknown".to_string(),
    };
    if name == "master" {
        return Ok(());
    }
    Err(RedisError::from((
        ErrorKind::MasterNameNotFoundBySentinel,
        "not the master",
        format!(
            "{addr} answers ROLE with {:?} (the sentinels may be failing over)",
            crate::util::text::printable_ascii(&name, 40)
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn master_addr_answers() {
        assert_eq!(
            parse_master_addr(&Value::Array(vec![bulk("10.0.0.7"), bulk("6380")])).unwrap(),
            Some(("10.0.0.7".to_string(), 6380))
        );
        assert_eq!(
            parse_master_addr(&Value::Array(vec![bulk("::1"), bulk("65535")])).unwrap(),
            Some(("::1".to_string(), 65535))
        );
        assert_eq!(parse_master_addr(&Value::Nil).unwrap(), None);
        let host = "h".repeat(MAX_ANSWER_HOST);
        assert!(parse_master_addr(&Value::Array(vec![bulk(&host), bulk("1")])).is_ok());
        let host = "h".repeat(MAX_ANSWER_HOST + 1);
        assert!(parse_master_addr(&Value::Array(vec![bulk(&host), bulk("1")])).is_err());
        for bad in [
            Value::Array(vec![bulk("h"), bulk("0")]),
            Value::Array(vec![bulk("h"), bulk("65536")]),
            Value::Array(vec![bulk("h")]),
            Value::Array(vec![bulk("h"), bulk("1"), bulk("x")]),
            Value::Array(vec![bulk("a b"), bulk("1")]),
            Value::Array(vec![bulk(""), bulk("1")]),
            Value::Array(vec![Value::Int(1), bulk("1")]),
            Value::Int(7),
        ] {
            assert!(parse_master_addr(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_budget_covers_every_sentinel() {
        let s = Sentinels::new(SentinelSetup {
            addrs: vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)],
            master_name: "m".into(),
            username: None,
            password: None,
            tls: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(200),
        });
        assert_eq!(s.budget(), Duration::from_millis(3600));
    }
}
