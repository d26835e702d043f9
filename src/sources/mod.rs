//! Published-policy sources (DANE, MTA-STS): what the engine consults
//! after the operator's policy file ([`crate::engine::policy_file`]) and
//! before the default.

pub mod dane;
pub mod mta_sts;
