//! Label values: the front doors, caches and fetches the families are
//! split by, and the indexes of decision levels and sources.

use crate::engine::decision::{Level, SourceKind};

pub use crate::log::record::Frontend;

impl Frontend {
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// A cache whose hits, misses and size are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cache {
    /// The STARTTLS prober's per-domain results.
    Prober,
    /// MTA-STS policies.
    MtaSts,
    /// DANE (TLSA) lookups.
    Dane,
    /// The policy server's RCPT decisions per open message.
    PolicyMessages,
    /// The outcome follower's socketmap decisions by next hop.
    OutcomeHops,
    /// The outcome follower's socketmap decisions by asking process.
    OutcomeProcesses,
    /// The outcome follower's RCPT-time decisions by queue id.
    OutcomeMessages,
}

impl Cache {
    pub const ALL: [Cache; 7] = [
        Cache::Prober,
        Cache::MtaSts,
        Cache::Dane,
        Cache::PolicyMessages,
        Cache::OutcomeHops,
        Cache::OutcomeProcesses,
        Cache::OutcomeMessages,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cache::Prober => "prober",
            Cache::MtaSts => "mta-sts",
            Cache::Dane => "dane",
            Cache::PolicyMessages => "policy-messages",
            Cache::OutcomeHops => "outcome-hops",
            Cache::OutcomeProcesses => "outcome-processes",
            Cache::OutcomeMessages => "outcome-messages",
        }
    }

    /// The component its errors are counted under.
    pub fn component(self) -> &'static str {
        match self {
            Cache::Prober => "prober",
            Cache::MtaSts => "mta_sts",
            Cache::Dane => "dane",
            Cache::PolicyMessages => "policy",
            Cache::OutcomeHops | Cache::OutcomeProcesses | Cache::OutcomeMessages => "outcomes",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// A published-policy fetch: what a dynamic source looks up on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fetch {
    /// TXT record plus HTTPS policy file (RFC 8461).
    MtaSts,
    /// TLSA records under DNSSEC (RFC 7672).
    Dane,
}

impl Fetch {
    pub const ALL: [Fetch; 2] = [Fetch::MtaSts, Fetch::Dane];

    pub fn as_str(self) -> &'static str {
        match self {
            Fetch::MtaSts => "mta-sts",
            Fetch::Dane => "dane",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchResult {
    /// A usable policy (MTA-STS policy, TLSA records).
    Found,
    /// Definitely none published (no TXT record, NXDOMAIN, no TLSA).
    None,
    /// Something was published but cannot be used (bad policy syntax,
    /// unsigned or bogus DNSSEC answer, unusable TLSA).
    Invalid,
    /// Could not tell: timeout, SERVFAIL, HTTPS failure.
    Error,
}

impl FetchResult {
    pub const ALL: [FetchResult; 4] = [
        FetchResult::Found,
        FetchResult::None,
        FetchResult::Invalid,
        FetchResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FetchResult::Found => "found",
            FetchResult::None => "none",
            FetchResult::Invalid => "invalid",
            FetchResult::Error => "error",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

pub(super) const SOURCES: [SourceKind; 4] = [
    SourceKind::Static,
    SourceKind::Dane,
    SourceKind::MtaSts,
    SourceKind::Default,
];

pub(super) fn source_index(s: SourceKind) -> usize {
    match s {
        SourceKind::Static => 0,
        SourceKind::Dane => 1,
        SourceKind::MtaSts => 2,
        SourceKind::Default => 3,
    }
}

pub(super) fn level_index(l: Level) -> usize {
    Level::ALL
        .iter()
        .position(|x| *x == l)
        .expect("Level::ALL lists every level")
}
