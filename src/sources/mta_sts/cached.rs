//! What the MTA-STS cache holds: a policy with its answer built for the
//! settings in force, or a remembered "no policy".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::MtaStsConfig;
use super::policy::{self, AnswerStyle, Mode, StsPolicy};
use super::to_time;
use crate::cache::Expiry;
use crate::engine::Consulted;
use crate::engine::decision::{Decision, Level, Published, SourceKind};

/// What the store keeps per domain (the payload's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The policy id from the TXT record when the policy was fetched.
    pub id: String,
    pub policy: StsPolicy,
    /// The policy text as fetched.
    pub text: String,
}

/// A cached policy.
#[derive(Debug)]
pub struct Cached {
    pub domain: String,
    pub id: String,
    pub policy: StsPolicy,
    pub text: String,
    pub fetched_at: u64,
    pub expires_at: u64,
    /// Last time the TXT record was looked at (or such a look started).
    pub(super) checked_at: AtomicU64,
    /// Last time a background refresh was started.
    pub(super) refresh_started_at: AtomicU64,
    /// The answer, built for the settings in force.
    pub(super) answer: Consulted,
}

impl Cached {
    pub fn checked_at(&self) -> u64 {
        self.checked_at.load(Ordering::Relaxed)
    }

    /// When the policy is fetched again: `refresh_interval` after the
    /// fetch, at the latest half-way through `max_age`.
    pub fn refresh_due(&self, refresh_interval: Duration) -> u64 {
        let half = self.policy.max_age / 2;
        self.fetched_at + half.min(refresh_interval.as_secs())
    }

    pub(super) fn persisted(&self) -> Persisted {
        Persisted {
            id: self.id.clone(),
            policy: self.policy.clone(),
            text: self.text.clone(),
        }
    }
}

/// A remembered "no policy".
#[derive(Debug)]
pub struct Negative {
    pub until: u64,
    pub why: String,
    /// Why a domain that publishes MTA-STS has no usable policy; `None`
    /// for a domain without a record.
    pub failure: Option<super::StsPolicyFailure>,
}

#[derive(Debug, Clone)]
pub(super) enum Slot {
    Policy(Arc<Cached>),
    Negative(Arc<Negative>),
}

/// What the cache holds for a domain, for `explain` and the CLI.
#[derive(Debug, Clone)]
pub enum CacheState {
    Policy(Arc<Cached>),
    Negative(Arc<Negative>),
    Nothing,
}

/// The settings that a reload may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub(super) lookup_timeout: Duration,
    pub(super) negative_ttl: Duration,
    pub(super) check_interval: Duration,
    pub(super) refresh_interval: Duration,
    pub(super) strict_testing: bool,
    pub(super) style: AnswerStyle,
}

impl From<&MtaStsConfig> for Settings {
    fn from(c: &MtaStsConfig) -> Self {
        Settings {
            lookup_timeout: c.lookup_timeout,
            negative_ttl: c.negative_ttl,
            check_interval: c.check_interval,
            refresh_interval: c.refresh_interval,
            strict_testing: c.strict_testing,
            style: c.answer_style(),
        }
    }
}

pub(super) fn build_cached(
    domain: &str,
    p: Persisted,
    fetched_at: u64,
    expires_at: u64,
    checked_at: u64,
    settings: &Settings,
) -> Cached {
    let answer = answer(domain, &p.id, &p.policy, fetched_at, settings);
    Cached {
        domain: domain.to_string(),
        id: p.id,
        policy: p.policy,
        text: p.text,
        fetched_at,
        expires_at,
        checked_at: AtomicU64::new(checked_at),
        refresh_started_at: AtomicU64::new(0),
        answer,
    }
}

pub(super) fn rebuild(c: &Cached, settings: &Settings) -> Cached {
    let mut n = build_cached(
        &c.domain,
        c.persisted(),
        c.fetched_at,
        c.expires_at,
        c.checked_at(),
        settings,
    );
    n.refresh_started_at = AtomicU64::new(c.refresh_started_at.load(Ordering::Relaxed));
    n
}

/// The answer for a policy.
fn answer(
    domain: &str,
    id: &str,
    p: &StsPolicy,
    fetched_at: u64,
    settings: &Settings,
) -> Consulted {
    let published = Some(Arc::new(Published {
        policy_id: Some(Arc::from(id)),
        mode: Some(p.mode.as_str()),
    }));
    let mx = p.mx.join(", ");
    let ttl = Duration::from_secs(p.max_age).min(settings.check_interval);
    let fetched = humantime::format_rfc3339_seconds(to_time(fetched_at));
    let secure = |reason: String| Decision {
        level: Level::Secure,
        policy: Arc::from(policy::postfix_secure(domain, p, settings.style)),
        source: SourceKind::MtaSts,
        rule: None,
        matched: None,
        reason: Arc::from(reason),
        ttl,
        raised: false,
        temporary: false,
        published: published.clone(),
    };
    match p.mode {
        Mode::Enforce => Consulted::Policy(secure(format!(
            "MTA-STS policy {id} (enforce, fetched {fetched}): MX must be {mx}"
        ))),
        Mode::Testing if settings.strict_testing => Consulted::Policy(secure(format!(
            "MTA-STS policy {id} (testing, enforced by strict_testing, fetched {fetched}): MX must be {mx}"
        ))),
        Mode::Testing => Consulted::Policy(Decision {
            level: Level::May,
            policy: Arc::from(Level::May.as_str()),
            source: SourceKind::MtaSts,
            rule: None,
            matched: None,
            reason: Arc::from(format!(
                "MTA-STS policy {id} is in testing mode: opportunistic TLS (fetched {fetched})"
            )),
            ttl,
            raised: false,
            temporary: false,
            published,
        }),
        Mode::None => Consulted::NoPolicy(format!(
            "MTA-STS policy {id} has mode none (fetched {fetched})"
        )),
    }
}

impl Slot {
    /// What the slot answers.
    pub(super) fn answer(&self) -> Consulted {
        match self {
            Slot::Policy(c) => c.answer.clone(),
            Slot::Negative(n) => Consulted::NoPolicy(n.why.clone()),
        }
    }

    /// How long the cache serves it: a policy until it expires, a "no
    /// policy" until `negative_ttl` is over. Refreshes are the source's
    /// (TXT checks, the maintenance round), never the cache's.
    pub(super) fn expiry(&self) -> Expiry {
        match self {
            Slot::Policy(c) => Expiry::until(to_time(c.expires_at)).no_refresh(),
            Slot::Negative(n) => Expiry::until(to_time(n.until)).negative().no_refresh(),
        }
    }
}
