//! Front doors: thin adapters between a Postfix protocol and the engine.

pub mod attrs;
pub mod message;
pub mod milter;
pub mod netstring;
pub mod policy;
pub mod socketmap;
