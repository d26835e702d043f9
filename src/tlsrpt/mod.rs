//! SMTP TLS Reporting (RFC 8460) from any Postfix: the `_smtp._tls` TXT
//! record of a recipient domain ([`record`]), the aggregate report built
//! from a day's counts ([`report`]) and the mail that carries it
//! ([`mail`]); a delivery attempt as a report's session ([`session`]),
//! counted once in the SQLite file ([`store`]).

pub mod mail;
pub mod record;
pub mod report;
pub mod session;
pub mod store;
