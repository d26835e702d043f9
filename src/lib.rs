//! tls-policyd: per-recipient-domain TLS policy for Postfix.
//!
//! One policy engine ([`engine`]) fed by policy sources ([`sources`]),
//! reached through front doors ([`frontends`]), every decision written to
//! the decision log ([`log`]). [`daemon::serve`] runs it all.

pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod doctor;
pub mod engine;
pub mod frontends;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod listen;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod outcomes;
pub mod prober;
pub mod shared;
pub mod sources;
pub mod store;
pub mod tls_roots;
pub mod tlsrpt;
pub mod util;

pub use daemon::{Context, Listeners, serve};
pub use engine::Engine;
