//! State a fleet of hosts shares: a Redis (or Valkey) store, `[shared]`.
//!
//! `config` is the section; `value` what one key holds (the cache file's
//! JSON payload per kind and domain, with its times and a version;
//! bounded, and refused when it does not decode); `connect` where the
//! connection goes (the URL, or the master `sentinel` finds) and its TLS
//! settings; `store` the client: a
//! circuit breaker in front of every read, writes queued to a task of
//! their own. Sources reach it through `cache::persist::SharedEntries`,
//! handed to them by the daemon: a local cache miss asks it before a
//! discovery, and what a discovery learns is published. `fleet` makes
//! that one discovery per domain for the whole fleet: a claim (a
//! short-lived lock) per domain, notices of ended discoveries over
//! pub/sub, and the waits of the hosts that lost the claim (`waits`: what
//! a host keeps of them). `replay` fills the store with what the sources
//! hold each time it becomes reachable. `reports` holds TLS-RPT's keys:
//! each host's counts of a day and domain, the lock and the claim that
//! let one host send the fleet's report (`tlsrpt::fleet::FleetReports`,
//! handed to the report sender).

mod bad_values;
mod breaker;
pub mod config;
pub mod connect;
mod fleet;
pub mod replay;
pub mod reports;
pub mod sentinel;
pub mod store;
pub mod value;
mod waits;

pub use config::SharedConfig;
pub use connect::SharedError;
pub use replay::Replayed;
pub use store::{Held, SharedStatus, SharedStore};
