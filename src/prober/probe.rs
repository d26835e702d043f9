//! One probe: the MX hosts of a domain, their addresses, and the SMTP
//! dialogue with each (EHLO, STARTTLS, the TLS handshake).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use super::config::ProberConfig;
use super::result::{DomainProbe, MxResult, MxStatus};
use super::smtp::SmtpConn;
use super::{Inner, tls};
use crate::dns::{self, MxAnswer};

/// An MX host and what its address lookup gave.
struct Target {
    /// Position in preference order.
    index: usize,
    preference: u16,
    host: String,
    addrs: Result<Vec<IpAddr>, dns::LookupError>,
}

/// The whole probe of one domain.
pub(super) async fn run_probe(inner: &Arc<Inner>, domain: &str) -> DomainProbe {
    let Ok(_permit) = inner.probes.acquire().await else {
        return DomainProbe::dns_failure(
            domain,
            SystemTime::now(),
            "prober is shutting down".into(),
        );
    };
    let probed_at = SystemTime::now();
    let cfg = &inner.config;
    tracing::debug!(domain, "probe started");
    let (mut hosts, implicit) = match dns::lookup_mx(&inner.resolver, domain).await {
        Ok(MxAnswer::Hosts(h)) => (h, false),
        Ok(MxAnswer::NoMx) => (vec![(0, domain.to_string())], true),
        Ok(MxAnswer::NullMx) => {
            return DomainProbe {
                domain: domain.to_string(),
                probed_at,
                mx: Vec::new(),
                null_mx: true,
                implicit_mx: false,
                dns_error: None,
            };
        }
        Err(e) => return DomainProbe::dns_failure(domain, probed_at, e.to_string()),
    };
    hosts.truncate(cfg.max_mx);

    // Addresses of every host, looked up at the same time.
    let mut lookups = JoinSet::new();
    for (i, (pref, host)) in hosts.iter().enumerate() {
        let inner = inner.clone();
        let (pref, host) = (*pref, host.clone());
        lookups.spawn(async move {
            let addrs =
                dns::lookup_addresses(&inner.resolver, &host, inner.config.max_addresses_per_mx)
                    .await;
            Target {
                index: i,
                preference: pref,
                host,
                addrs,
            }
        });
    }
    let mut targets: Vec<Target> = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        if let Ok(t) = joined {
            targets.push(t);
        }
    }
    targets.sort_by_key(|t| t.index);

    // Then every address, each connection waiting for a slot.
    let mut results: Vec<(usize, usize, MxResult)> = Vec::new();
    let mut probes = JoinSet::new();
    for Target {
        index: i,
        preference: pref,
        host,
        addrs,
    } in targets
    {
        match addrs {
            Err(e) => results.push((
                i,
                0,
                MxResult::unreached(&host, pref, None, format!("no address for {host}: {e}")),
            )),
            Ok(addrs) => {
                for (j, ip) in addrs.into_iter().enumerate() {
                    let inner = inner.clone();
                    let host = host.clone();
                    probes
                        .spawn(async move { (i, j, probe_address(&inner, &host, pref, ip).await) });
                }
            }
        }
    }
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!(domain, "probe task failed: {e}"),
        }
    }
    results.sort_by_key(|r| (r.0, r.1));
    let probe = DomainProbe {
        domain: domain.to_string(),
        probed_at,
        mx: results.into_iter().map(|r| r.2).collect(),
        null_mx: false,
        implicit_mx: implicit,
        dns_error: None,
    };
    tracing::debug!(domain, verdict = probe.verdict().as_str(), "probe finished");
    probe
}

/// Probe one address of one MX host.
async fn probe_address(inner: &Inner, host: &str, preference: u16, ip: IpAddr) -> MxResult {
    let mut r = MxResult::unreached(host, preference, Some(ip), String::new());
    let Ok(_permit) = inner.connections.acquire().await else {
        r.error = Some("prober is shutting down".into());
        return r;
    };
    r.error = None;
    if let Err(e) = dialogue(inner, host, ip, &mut r).await {
        r.error = Some(e);
    }
    r
}

/// The SMTP dialogue. Fills `r` as it goes; an `Err` is the text of the
/// step that failed (the status says how far it got).
async fn dialogue(inner: &Inner, host: &str, ip: IpAddr, r: &mut MxResult) -> Result<(), String> {
    let cfg = &inner.config;
    let addr = SocketAddr::new(ip, cfg.port);
    let step = cfg.smtp_timeout;
    let stream = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(format!(
                "connect to {addr}: no answer within {}",
                humantime::format_duration(cfg.connect_timeout)
            ));
        }
        Ok(Err(e)) => return Err(format!("connect to {addr}: {e}")),
        Ok(Ok(s)) => s,
    };
    let mut conn = SmtpConn::new(stream);
    let greeting = conn
        .read_reply(step)
        .await
        .map_err(|e| format!("greeting from {addr}: {e}"))?;
    if greeting.code != 220 {
        quit(&mut conn, cfg).await;
        return Err(format!(
            "greeting from {addr} refused us: {}",
            greeting.summary()
        ));
    }
    let ehlo = conn
        .command(&format!("EHLO {}", cfg.helo_name), step)
        .await
        .map_err(|e| format!("EHLO: {e}"))?;
    if ehlo.code != 250 {
        quit(&mut conn, cfg).await;
        return Err(format!("EHLO refused: {}", ehlo.summary()));
    }
    if !ehlo.has_extension("STARTTLS") {
        r.status = MxStatus::NoStarttls;
        quit(&mut conn, cfg).await;
        return Ok(());
    }
    r.starttls_offered = true;
    r.status = MxStatus::StarttlsFailed;
    let reply = conn
        .command("STARTTLS", step)
        .await
        .map_err(|e| format!("STARTTLS: {e}"))?;
    if reply.code != 220 {
        quit(&mut conn, cfg).await;
        return Err(format!("STARTTLS refused: {}", reply.summary()));
    }
    if conn.has_pending() {
        return Err(
            "the server sent data after its STARTTLS reply, before the TLS handshake".into(),
        );
    }
    let (config, verifier) = inner.tls.client_config().map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be sent as a TLS server name: {e}"))?;
    let handshake = TlsConnector::from(config).connect(name, conn.into_inner());
    let outcome = tokio::time::timeout(cfg.tls_timeout, handshake).await;
    if let Some(rep) = verifier.report() {
        r.cert_chain_valid = Some(rep.chain_valid);
        r.cert_error = rep.chain_error;
        if !rep.chain_valid
            && let Some(why) = inner.tls.unknown_trust()
        {
            // Postfix may trust the CA behind this chain: not known.
            r.cert_chain_valid = None;
            r.cert_error = Some(format!(
                "{}; {why}",
                r.cert_error.as_deref().unwrap_or("not trusted here")
            ));
        }
        r.cert_names = rep.names;
        r.cert_matches_host = Some(rep.matches_host);
    }
    let tls = match outcome {
        Err(_) => {
            return Err(format!(
                "TLS handshake: not finished within {}",
                humantime::format_duration(cfg.tls_timeout)
            ));
        }
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Ok(Ok(tls)) => tls,
    };
    {
        let (_, session) = tls.get_ref();
        r.tls_version = session.protocol_version().map(tls::version_text);
        r.cipher = session.negotiated_cipher_suite().map(tls::cipher_text);
    }
    r.status = if r.cert_chain_valid == Some(true) && r.cert_matches_host == Some(true) {
        MxStatus::TlsVerified
    } else {
        MxStatus::TlsUnverified
    };
    let mut conn = SmtpConn::new(tls);
    quit(&mut conn, cfg).await;
    let mut tls = conn.into_inner();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncWriteExt::shutdown(&mut tls),
    )
    .await;
    Ok(())
}

/// Say goodbye without waiting long for the answer.
async fn quit<S>(conn: &mut SmtpConn<S>, cfg: &ProberConfig)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = cfg.smtp_timeout.min(Duration::from_secs(5));
    let _ = conn.command("QUIT", deadline).await;
}
