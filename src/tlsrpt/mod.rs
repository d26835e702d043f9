//! SMTP TLS Reporting (RFC 8460) from any Postfix: the `_smtp._tls` TXT
//! record of a recipient domain ([`record`], looked up and kept by
//! [`directory`]), a delivery attempt as a report's session ([`session`],
//! with the policy that applied from [`applied`]), counted once in the
//! SQLite file ([`store`]) by the [`counter`] the outcome follower feeds; the aggregate report built from a day's counts
//! ([`report`]), the mail that carries it ([`mail`]), kept and sent once
//! per destination ([`outbox`], [`deliver`], [`sender`]). `[tlsrpt]` in
//! [`config`].

pub mod applied;
pub mod config;
pub mod counter;
pub mod deliver;
pub mod directory;
pub mod fleet;
pub mod fleet_send;
pub mod mail;
pub mod outbox;
pub mod record;
pub mod report;
pub mod sender;
pub mod session;
pub mod store;
