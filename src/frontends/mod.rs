//! Front doors: thin adapters between a Postfix protocol and the engine.

pub mod netstring;
pub mod socketmap;
