//! The decision log: records written by the daemon ([`record`]), the
//! reader behind `tls-policyd log` ([`reader`]) and the TLS posture report
//! behind `tls-policyd report` ([`report`]).

pub mod reader;
pub mod record;
pub mod report;
