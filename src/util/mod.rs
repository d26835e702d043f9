//! Small helpers every layer may use; they import nothing of the crate.

pub mod duration;
pub mod paths;
pub mod rate_limit;
pub mod text;
