//! What a probe found, and what that lets a caller conclude.
//!
//! The rule every conclusion here follows: never infer absence from a
//! failure. A server that did not answer, answered with an error, or could
//! not be found in DNS tells nothing about its TLS; only a server that
//! answered EHLO without STARTTLS says "no STARTTLS".

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use super::tls::{cert_matches_pattern, cert_name_covers};

/// How far the dialogue with one MX address got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MxStatus {
    /// No EHLO answer: no address, connection refused or timed out, a
    /// refusing greeting, EHLO refused, or a protocol error. Says nothing
    /// about TLS.
    Unknown,
    /// EHLO answered without STARTTLS.
    NoStarttls,
    /// STARTTLS offered, but the command was refused or the handshake
    /// failed (possibly only for this prober's TLS stack).
    StarttlsFailed,
    /// TLS established; the certificate is not valid for the MX host name
    /// (untrusted chain, or another name).
    TlsUnverified,
    /// TLS established; the chain leads to a trusted root and the leaf is
    /// valid for the MX host name.
    TlsVerified,
}

impl MxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MxStatus::Unknown => "unknown",
            MxStatus::NoStarttls => "no_starttls",
            MxStatus::StarttlsFailed => "starttls_failed",
            MxStatus::TlsUnverified => "tls_unverified",
            MxStatus::TlsVerified => "tls_verified",
        }
    }

    /// Whether this is knowledge about the server's TLS.
    pub fn is_known(self) -> bool {
        self != MxStatus::Unknown
    }

    /// Whether the server offered STARTTLS.
    pub fn offers_starttls(self) -> bool {
        matches!(
            self,
            MxStatus::StarttlsFailed | MxStatus::TlsUnverified | MxStatus::TlsVerified
        )
    }
}

/// The probe of one address of one MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MxResult {
    /// MX host name, lower case, no trailing dot.
    pub host: String,
    pub preference: u16,
    /// The address connected to; `None` when the host has no address.
    pub address: Option<IpAddr>,
    pub status: MxStatus,
    pub starttls_offered: bool,
    /// `TLSv1.3`, `TLSv1.2`.
    pub tls_version: Option<String>,
    /// IANA cipher suite name.
    pub cipher: Option<String>,
    /// The chain leads to a trusted root; `None` without a certificate.
    pub cert_chain_valid: Option<bool>,
    /// Why the chain is not valid.
    pub cert_error: Option<String>,
    /// DNS names in the leaf certificate (subject alternative names).
    pub cert_names: Vec<String>,
    /// The leaf is valid for the MX host name; `None` without a certificate.
    pub cert_matches_host: Option<bool>,
    /// What went wrong, for every status but the TLS ones that completed.
    pub error: Option<String>,
}

impl MxResult {
    /// A result for a host that was never connected to.
    pub fn unreached(
        host: &str,
        preference: u16,
        address: Option<IpAddr>,
        error: String,
    ) -> MxResult {
        MxResult {
            host: host.to_string(),
            preference,
            address,
            status: MxStatus::Unknown,
            starttls_offered: false,
            tls_version: None,
            cipher: None,
            cert_chain_valid: None,
            cert_error: None,
            cert_names: Vec::new(),
            cert_matches_host: None,
            error: Some(error),
        }
    }

    /// TLS completed and the certificate chains to a trusted root.
    pub fn tls_with_trusted_chain(&self) -> bool {
        self.tls_version.is_some() && self.cert_chain_valid == Some(true)
    }

    /// TLS completed with a trusted certificate matching one of `patterns`
    /// (see [`DomainProbe::any_verified_for`]).
    pub fn verified_for(&self, domain: &str, patterns: &[String]) -> bool {
        self.tls_with_trusted_chain()
            && patterns.iter().any(|p| match p.as_str() {
                "hostname" => self.cert_matches_host == Some(true),
                "nexthop" => self.cert_names.iter().any(|n| cert_name_covers(n, domain)),
                "dot-nexthop" => cert_matches_pattern(&self.cert_names, &format!(".{domain}")),
                other => cert_matches_pattern(&self.cert_names, other),
            })
    }
}

/// Everything a probe of one domain found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainProbe {
    /// The domain, normalised.
    pub domain: String,
    /// When the probe started.
    #[serde(serialize_with = "rfc3339")]
    pub probed_at: SystemTime,
    /// One entry per MX address probed, MX hosts in preference order.
    pub mx: Vec<MxResult>,
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    pub null_mx: bool,
    /// The domain has no MX records; the domain itself was probed.
    pub implicit_mx: bool,
    /// The MX lookup failed, or the domain does not exist: no knowledge.
    pub dns_error: Option<String>,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

/// What a domain's mail servers can do with TLS, as far as is known. Each
/// variant says which early refusals it supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "snake_case")]
pub enum TlsCapability {
    /// Nothing definite is known: no probe, a lookup failure, or servers
    /// that did not answer. Supports no refusal.
    Unknown(String),
    /// The domain accepts no mail (null MX). Not a TLS question.
    NullMx(String),
    /// Every MX host answered EHLO and none offers STARTTLS: delivery with
    /// forced TLS cannot succeed.
    NoStarttls(String),
    /// Every MX host answered; at least one offers STARTTLS; every one that
    /// offers it completed a handshake, and none showed a certificate that
    /// chains to a trusted root and is valid for its host name. Forced TLS
    /// (`encrypt`) can succeed; `verify` by host name cannot.
    StarttlsUnverified(String),
    /// STARTTLS is offered, but the picture is incomplete (a host did not
    /// answer, or a handshake failed): `encrypt` can probably succeed,
    /// nothing is known about verification.
    StarttlsOffered(String),
    /// At least one MX host completed TLS with a certificate that chains to
    /// a trusted root and is valid for its host name.
    StarttlsVerified(String),
}

impl TlsCapability {
    /// The variant's name as in JSON (`no_starttls`).
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsCapability::Unknown(_) => "unknown",
            TlsCapability::NullMx(_) => "null_mx",
            TlsCapability::NoStarttls(_) => "no_starttls",
            TlsCapability::StarttlsUnverified(_) => "starttls_unverified",
            TlsCapability::StarttlsOffered(_) => "starttls_offered",
            TlsCapability::StarttlsVerified(_) => "starttls_verified",
        }
    }

    /// A sentence saying what was found.
    pub fn detail(&self) -> &str {
        match self {
            TlsCapability::Unknown(d)
            | TlsCapability::NullMx(d)
            | TlsCapability::NoStarttls(d)
            | TlsCapability::StarttlsUnverified(d)
            | TlsCapability::StarttlsOffered(d)
            | TlsCapability::StarttlsVerified(d) => d,
        }
    }

    /// Whether this is knowledge (as opposed to "unknown").
    pub fn is_known(&self) -> bool {
        !matches!(self, TlsCapability::Unknown(_))
    }
}

impl std::fmt::Display for TlsCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.detail())
    }
}

/// One MX host with the best of what its addresses showed.
struct HostView<'a> {
    host: &'a str,
    status: MxStatus,
    best: &'a MxResult,
}

impl DomainProbe {
    /// A probe that found nothing because of a lookup problem.
    pub fn dns_failure(domain: &str, probed_at: SystemTime, error: String) -> DomainProbe {
        DomainProbe {
            domain: domain.to_string(),
            probed_at,
            mx: Vec::new(),
            null_mx: false,
            implicit_mx: false,
            dns_error: Some(error),
        }
    }

    /// MX hosts in preference order, each with its most capable address.
    fn hosts(&self) -> Vec<HostView<'_>> {
        let mut out: Vec<HostView<'_>> = Vec::new();
        for r in &self.mx {
            match out.iter_mut().find(|h| h.host == r.host) {
                Some(h) => {
                    if r.status > h.status {
                        h.status = r.status;
                        h.best = r;
                    }
                }
                None => out.push(HostView {
                    host: &r.host,
                    status: r.status,
                    best: r,
                }),
            }
        }
        out
    }

    /// Some MX address offered STARTTLS.
    pub fn any_starttls(&self) -> bool {
        self.mx.iter().any(|r| r.starttls_offered)
    }

    /// Every MX host answered EHLO and none offers STARTTLS. False when
    /// anything is unknown.
    pub fn all_failed_starttls(&self) -> bool {
        matches!(self.verdict(), TlsCapability::NoStarttls(_))
    }

    /// Every MX host gave a definite answer (the lookup worked and each
    /// host has at least one address that answered EHLO).
    pub fn all_known(&self) -> bool {
        self.dns_error.is_none() && !self.null_mx && {
            let hosts = self.hosts();
            !hosts.is_empty() && hosts.iter().all(|h| h.status.is_known())
        }
    }

    /// Some MX completed TLS with a trusted certificate valid for its host
    /// name.
    pub fn any_verified(&self) -> bool {
        self.mx.iter().any(|r| r.status == MxStatus::TlsVerified)
    }

    /// Some MX completed TLS with a trusted certificate matching one of
    /// `patterns`, in Postfix `match=` syntax: `host.example` (that name),
    /// `.example` (any name below it), or the words `hostname` (the MX
    /// host name), `nexthop` (the domain) and `dot-nexthop` (any name
    /// below the domain).
    pub fn any_verified_for(&self, patterns: &[String]) -> bool {
        self.mx
            .iter()
            .any(|r| r.verified_for(&self.domain, patterns))
    }

    /// Knowledge that no MX would pass verification for `patterns`: every
    /// host answered, and every host that offers STARTTLS completed a
    /// handshake whose certificate fails the patterns. False when anything
    /// is unknown.
    pub fn definitely_unverified_for(&self, patterns: &[String]) -> bool {
        self.all_known()
            && !self.any_verified_for(patterns)
            && self.hosts().iter().all(|h| {
                matches!(
                    h.status,
                    MxStatus::NoStarttls | MxStatus::TlsUnverified | MxStatus::TlsVerified
                )
            })
    }

    /// What the probe lets a caller conclude, with a sentence saying why.
    pub fn verdict(&self) -> TlsCapability {
        let d = &self.domain;
        if let Some(e) = &self.dns_error {
            return TlsCapability::Unknown(format!("MX lookup for {d} failed: {e}"));
        }
        if self.null_mx {
            return TlsCapability::NullMx(format!("{d} publishes a null MX: it accepts no mail"));
        }
        let hosts = self.hosts();
        if hosts.is_empty() {
            return TlsCapability::Unknown(format!("no MX host of {d} was probed"));
        }
        if let Some(h) = hosts.iter().find(|h| h.status == MxStatus::TlsVerified) {
            return TlsCapability::StarttlsVerified(format!(
                "{} offers STARTTLS with a trusted certificate valid for its name ({})",
                h.host,
                tls_summary(h.best)
            ));
        }
        let all_known = hosts.iter().all(|h| h.status.is_known());
        let any_offered = hosts.iter().any(|h| h.status.offers_starttls());
        let details = hosts
            .iter()
            .map(|h| format!("{}: {}", h.host, host_detail(h)))
            .collect::<Vec<_>>()
            .join("; ");
        if all_known && !any_offered {
            let what = if hosts.len() == 1 {
                format!("the MX of {d} does not offer STARTTLS")
            } else {
                format!("no MX of {d} offers STARTTLS")
            };
            return TlsCapability::NoStarttls(format!("{what} ({details})"));
        }
        if all_known && !hosts.iter().any(|h| h.status == MxStatus::StarttlsFailed) {
            return TlsCapability::StarttlsUnverified(format!(
                "STARTTLS is offered but no MX of {d} shows a trusted certificate valid for its name ({details})"
            ));
        }
        if any_offered {
            return TlsCapability::StarttlsOffered(format!(
                "STARTTLS is offered, but not everything is known ({details})"
            ));
        }
        TlsCapability::Unknown(format!("no MX of {d} answered EHLO ({details})"))
    }
}

fn tls_summary(r: &MxResult) -> String {
    let mut s = String::new();
    if let Some(v) = &r.tls_version {
        s.push_str(v);
    }
    if let Some(c) = &r.cipher {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(c);
    }
    s
}

fn host_detail(h: &HostView<'_>) -> String {
    let r = h.best;
    match h.status {
        MxStatus::Unknown => r.error.clone().unwrap_or_else(|| "no answer".into()),
        MxStatus::NoStarttls => "EHLO without STARTTLS".into(),
        MxStatus::StarttlsFailed => format!(
            "STARTTLS offered but failed: {}",
            r.error.as_deref().unwrap_or("unknown error")
        ),
        MxStatus::TlsUnverified => {
            if r.cert_chain_valid == Some(false) {
                format!(
                    "TLS with an untrusted certificate: {}",
                    r.cert_error.as_deref().unwrap_or("chain not valid")
                )
            } else {
                format!(
                    "TLS with a certificate for other names ({})",
                    if r.cert_names.is_empty() {
                        "none".to_string()
                    } else {
                        r.cert_names.join(", ")
                    }
                )
            }
        }
        MxStatus::TlsVerified => format!("TLS verified ({})", tls_summary(r)),
    }
}

/// The probe as text, for `tls-policyd probe DOMAIN`.
pub fn render_text(p: &DomainProbe) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "domain       {}", p.domain);
    let _ = writeln!(
        s,
        "probed at    {}",
        humantime::format_rfc3339_seconds(p.probed_at)
    );
    let verdict = p.verdict();
    let _ = writeln!(s, "verdict      {}", verdict.as_str());
    let _ = writeln!(s, "             {}", verdict.detail());
    if let Some(e) = &p.dns_error {
        let _ = writeln!(s, "dns error    {e}");
    }
    if p.null_mx {
        let _ = writeln!(s, "mx           null MX (\".\"): no mail accepted");
    } else if p.implicit_mx {
        let _ = writeln!(
            s,
            "mx           none published; the domain itself is the mail host"
        );
    }
    for r in &p.mx {
        let addr = r
            .address
            .map_or_else(|| "no address".to_string(), |a| a.to_string());
        let _ = writeln!(s, "mx {} (preference {}) at {}", r.host, r.preference, addr);
        let _ = writeln!(s, "  status       {}", r.status.as_str());
        if r.status.is_known() {
            let _ = writeln!(
                s,
                "  starttls     {}",
                if r.starttls_offered {
                    "offered"
                } else {
                    "not offered"
                }
            );
        }
        if r.tls_version.is_some() {
            let _ = writeln!(s, "  tls          {}", tls_summary(r));
        }
        if let Some(valid) = r.cert_chain_valid {
            let chain = if valid {
                "chain valid (trusted root)".to_string()
            } else {
                format!(
                    "chain NOT valid: {}",
                    r.cert_error.as_deref().unwrap_or("not trusted")
                )
            };
            let _ = writeln!(s, "  certificate  {chain}");
            let names = if r.cert_names.is_empty() {
                "(no DNS names)".to_string()
            } else {
                r.cert_names.join(", ")
            };
            let _ = writeln!(s, "  names        {names}");
            let _ = writeln!(
                s,
                "  host match   {}",
                if r.cert_matches_host == Some(true) {
                    format!("valid for {}", r.host)
                } else {
                    format!("not valid for {}", r.host)
                }
            );
        }
        if let Some(e) = &r.error {
            let _ = writeln!(s, "  error        {e}");
        }
    }
    s
}

/// The probe as one JSON object, with the verdict added.
pub fn render_json(p: &DomainProbe) -> String {
    #[derive(Serialize)]
    struct WithVerdict<'a> {
        #[serde(flatten)]
        probe: &'a DomainProbe,
        verdict: &'static str,
        detail: String,
    }
    let v = p.verdict();
    serde_json::to_string_pretty(&WithVerdict {
        probe: p,
        verdict: v.as_str(),
        detail: v.detail().to_string(),
    })
    .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str, status: MxStatus) -> MxResult {
        let mut m = MxResult::unreached(host, 10, Some("127.0.0.1".parse().unwrap()), "x".into());
        m.status = status;
        m.starttls_offered = status.offers_starttls();
        if status >= MxStatus::TlsUnverified {
            m.error = None;
            m.tls_version = Some("TLSv1.3".into());
            m.cipher = Some("TLS13_AES_256_GCM_SHA384".into());
            m.cert_chain_valid = Some(status == MxStatus::TlsVerified);
            m.cert_names = vec![host.to_string()];
            m.cert_matches_host = Some(true);
        }
        if status == MxStatus::NoStarttls {
            m.error = None;
        }
        m
    }

    fn probe(mx: Vec<MxResult>) -> DomainProbe {
        DomainProbe {
            domain: "example.test".into(),
            probed_at: SystemTime::UNIX_EPOCH,
            mx,
            null_mx: false,
            implicit_mx: false,
            dns_error: None,
        }
    }

    #[test]
    fn verdicts() {
        use MxStatus::*;
        let v = |mx| probe(mx).verdict().as_str();
        assert_eq!(v(vec![r("a", NoStarttls)]), "no_starttls");
        assert_eq!(
            v(vec![r("a", NoStarttls), r("b", NoStarttls)]),
            "no_starttls"
        );
        for (rows, want) in [
            (vec![r("a", NoStarttls), r("b", Unknown)], "unknown"),
            (vec![r("a", Unknown)], "unknown"),
            (vec![], "unknown"),
            (
                vec![r("a", NoStarttls), r("b", TlsUnverified)],
                "starttls_unverified",
            ),
            (
                vec![r("a", StarttlsFailed), r("b", TlsUnverified)],
                "starttls_offered",
            ),
            (
                vec![r("a", Unknown), r("b", TlsUnverified)],
                "starttls_offered",
            ),
            (
                vec![r("a", Unknown), r("b", TlsVerified)],
                "starttls_verified",
            ),
        ] {
            assert_eq!(v(rows), want);
        }
        // Two addresses of one host: the host counts as known when one answered.
        assert_eq!(v(vec![r("a", Unknown), r("a", NoStarttls)]), "no_starttls");
    }

    #[test]
    fn detail_names_hosts_and_reasons() {
        let p = probe(vec![r("mx1.example.test", MxStatus::NoStarttls)]);
        assert_eq!(
            p.verdict().detail(),
            "the MX of example.test does not offer STARTTLS (mx1.example.test: EHLO without STARTTLS)"
        );
        assert!(p.all_failed_starttls());
        assert!(!p.any_starttls());
        let mut failed = p.clone();
        failed.dns_error = Some("SERVFAIL".into());
        assert_eq!(failed.verdict().as_str(), "unknown");
        assert!(!failed.all_failed_starttls());
        assert!(!failed.all_known());
    }

    #[test]
    fn match_patterns_and_definite_unverified() {
        let mut m = r("mx1.example.test", MxStatus::TlsVerified);
        m.cert_names = vec!["mx1.example.test".into(), "*.mail.example.test".into()];
        let p = probe(vec![m]);
        let pats = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(p.any_verified_for(&pats(&["hostname"])));
        assert!(p.any_verified_for(&pats(&[".example.test"])));
        assert!(p.any_verified_for(&pats(&["dot-nexthop"])));
        assert!(!p.any_verified_for(&pats(&["nexthop"])));
        assert!(p.any_verified_for(&pats(&["x.mail.example.test"])));
        assert!(!p.any_verified_for(&pats(&["other.test"])));
        assert!(p.definitely_unverified_for(&pats(&["other.test"])));

        let untrusted = probe(vec![r("mx1.example.test", MxStatus::TlsUnverified)]);
        assert!(!untrusted.any_verified_for(&pats(&["hostname"])));
        assert!(untrusted.definitely_unverified_for(&pats(&["hostname"])));
        let partial = probe(vec![
            r("mx1.example.test", MxStatus::TlsUnverified),
            r("mx2.example.test", MxStatus::StarttlsFailed),
        ]);
        assert!(!partial.definitely_unverified_for(&pats(&["hostname"])));
    }

    #[test]
    fn json_and_text() {
        let p = probe(vec![r("mx1.example.test", MxStatus::TlsVerified)]);
        let j: serde_json::Value = serde_json::from_str(&render_json(&p)).unwrap();
        assert_eq!(j["verdict"], "starttls_verified");
        assert_eq!(j["probed_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(j["mx"][0]["status"], "tls_verified");
        assert_eq!(j["mx"][0]["tls_version"], "TLSv1.3");
        let t = render_text(&p);
        assert!(t.contains("verdict      starttls_verified"), "{t}");
        assert!(t.contains("chain valid"), "{t}");
        let cap = serde_json::to_value(p.verdict()).unwrap();
        assert_eq!(cap["verdict"], "starttls_verified");
    }
}
