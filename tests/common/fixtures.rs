//! Fixture files shared by several test crates, from `tests/fixtures/`
//! (its README says what each one is).

/// A policy file with only the default: opportunistic TLS everywhere.
pub const POLICY_DEFAULT: &str = include_str!("../fixtures/policy-default.toml");

/// A policy file with one rule: `bank.example` forced.
pub const POLICY_BANK: &str = include_str!("../fixtures/policy-bank.toml");

/// `[milter]` lines (without `listen`) switching every action on:
/// refusals (defer), the trace and routing headers, quarantine.
pub const MILTER_ALL_ACTIONS: &str = include_str!("../fixtures/milter-all-actions.toml");

/// A policy file with six rules covering every kind of entry: exact and
/// `.parent` domains, a nearer parent inside another rule's, IDNs as U-
/// and A-labels, next-hop keys, and `secure`/`verify`/`none` levels.
pub const POLICY_PARTNERS: &str = include_str!("../fixtures/policy-partners.toml");
