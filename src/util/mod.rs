//! Small helpers every layer may use; they import nothing of the crate.

pub mod decimal;
pub mod duration;
pub mod paths;
pub mod rate;
pub mod text;
