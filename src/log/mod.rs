//! The decision log: records written by the daemon ([`record`]) and the
//! reader behind `tls-policyd log` ([`reader`]).

pub mod reader;
pub mod record;
