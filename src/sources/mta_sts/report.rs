//! What `tls-policyd explain` and `tls-policyd cache` show about MTA-STS:
//! the TXT record and the policy as published now, and the cached policy
//! with its age.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::policy::StsPolicy;
use super::record::StsRecord;
use super::{DiscoveryError, MtaSts, Persisted};
use crate::cache::persist::{Entry, Kind};

/// The MTA-STS part of an explanation.
#[derive(Debug, Clone)]
pub struct Report {
    pub domain: String,
    /// The TXT record now.
    pub record: Result<StsRecord, DiscoveryError>,
    /// The policy fetched now (when there is a record).
    pub live: Option<Result<(StsPolicy, String), DiscoveryError>>,
    /// The cached entry in the cache file, if any.
    pub cached: Option<Entry>,
    /// Why the cache file could not be read, if it could not.
    pub cache_problem: Option<String>,
    pub now: SystemTime,
}

impl MtaSts {
    /// Look the domain up live (nothing is cached or stored) and put it
    /// beside what the cache file holds.
    pub async fn report(
        &self,
        domain: &str,
        cached: Option<Entry>,
        cache_problem: Option<String>,
    ) -> Report {
        let (record, live) = self.inspect(domain).await;
        Report {
            domain: domain.to_string(),
            record,
            live,
            cached,
            cache_problem,
            now: SystemTime::now(),
        }
    }
}

/// `2h 3m` (seconds left out past a minute).
pub fn ago(d: Duration) -> String {
    let s = d.as_secs();
    let rounded = if s >= 60 { s - s % 60 } else { s };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One line about a policy: `id X, mode enforce, max_age N, mx a, *.b`.
pub fn policy_line(id: &str, p: &StsPolicy) -> String {
    let mut s = format!("id {id}, mode {}, max_age {}", p.mode, p.max_age);
    if !p.mx.is_empty() {
        s += &format!(", mx {}", p.mx.join(", "));
    }
    if !p.unusable_mx.is_empty() {
        let bad: Vec<String> = p
            .unusable_mx
            .iter()
            .map(|(v, why)| format!("{v:?} ({why})"))
            .collect();
        s += &format!("; ignored mx {}", bad.join(", "));
    }
    s
}

/// The state of a cache entry at `now`: `valid, fetched … (2h ago),
/// expires … (in 6d)` or `expired …`.
pub fn entry_state(e: &Entry, now: SystemTime) -> String {
    let fetched = format!(
        "fetched {} ({} ago)",
        rfc3339(e.fetched_at),
        ago(now.duration_since(e.fetched_at).unwrap_or_default())
    );
    match e.expires_at.duration_since(now) {
        Ok(left) if !left.is_zero() => format!(
            "valid, {fetched}, expires {} (in {})",
            rfc3339(e.expires_at),
            ago(left)
        ),
        _ => format!("expired {}, {fetched}", rfc3339(e.expires_at)),
    }
}

/// A cache entry's MTA-STS payload, when it is one.
pub fn persisted(e: &Entry) -> Option<Persisted> {
    (e.kind == Kind::MtaSts)
        .then(|| e.decode::<Persisted>().ok())
        .flatten()
}

impl Report {
    /// Lines for `explain`, each starting with two spaces.
    pub fn text(&self) -> String {
        let mut out = String::new();
        match &self.record {
            Ok(r) => out += &format!("  record   {} (_mta-sts.{})\n", r.text, self.domain),
            Err(e) => out += &format!("  record   none: {e}\n"),
        }
        match &self.live {
            Some(Ok((p, _))) => {
                let id = self.record.as_ref().map(|r| r.id.as_str()).unwrap_or("?");
                out += &format!("  policy   {} (fetched now)\n", policy_line(id, p));
            }
            Some(Err(e)) => out += &format!("  policy   none: {e}\n"),
            None => out += "  policy   not fetched (no record)\n",
        }
        match (&self.cached, &self.cache_problem) {
            (_, Some(problem)) => out += &format!("  cache    {problem}\n"),
            (None, None) => out += "  cache    nothing cached for this domain\n",
            (Some(e), None) => {
                out += &format!("  cache    {}\n", entry_state(e, self.now));
                if let Some(p) = persisted(e) {
                    out += &format!("           {}\n", policy_line(&p.id, &p.policy));
                }
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let record = match &self.record {
            Ok(r) => json!({ "text": r.text, "id": r.id }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let live = match &self.live {
            Some(Ok((p, text))) => json!({ "policy": p, "text": text }),
            Some(Err(e)) => json!({ "error": e.to_string() }),
            None => Value::Null,
        };
        let cached = match (&self.cached, &self.cache_problem) {
            (_, Some(problem)) => json!({ "error": problem }),
            (None, None) => Value::Null,
            (Some(e), None) => entry_json(e, self.now),
        };
        json!({ "record": record, "live": live, "cache": cached })
    }
}

/// A cache entry as JSON, with its state at `now`.
pub fn entry_json(e: &Entry, now: SystemTime) -> Value {
    let payload: Value = serde_json::from_str(&e.payload).unwrap_or(Value::Null);
    json!({
        "kind": e.kind.as_str(),
        "domain": e.domain,
        "fetched_at": rfc3339(e.fetched_at),
        "expires_at": rfc3339(e.expires_at),
        "age_secs": now.duration_since(e.fetched_at).unwrap_or_default().as_secs(),
        "valid": e.is_valid_at(now),
        "payload": payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn states_and_ages() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let p = super::super::policy::parse(
            b"version: STSv1\nmode: enforce\nmx: mx.a.example\nmx: 192.0.2.1\nmax_age: 86400\n",
        )
        .unwrap();
        let e = Entry::new(
            Kind::MtaSts,
            "a.example",
            at(1_000_000),
            at(1_086_400),
            &Persisted {
                id: "x1".into(),
                policy: p.clone(),
                text: String::new(),
            },
        )
        .unwrap();
        let s = entry_state(&e, at(1_007_384));
        assert_eq!(
            s,
            "valid, fetched 1970-01-12T13:46:40Z (2h 3m ago), expires 1970-01-13T13:46:40Z (in 21h 56m)"
        );
        assert!(entry_state(&e, at(1_086_400)).starts_with("expired 1970-01-13T13:46:40Z"));
        assert_eq!(
            policy_line("x1", &p),
            "id x1, mode enforce, max_age 86400, mx mx.a.example; ignored mx \"192.0.2.1\" (an IP address is not a host name pattern)"
        );
        assert_eq!(persisted(&e).unwrap().id, "x1");
        let j = entry_json(&e, at(1_000_060));
        assert_eq!(j["age_secs"], 60);
        assert_eq!(j["valid"], true);
        assert_eq!(j["payload"]["policy"]["mode"], "enforce");
    }
}
