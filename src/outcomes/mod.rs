//! Delivery outcomes: what Postfix did with each delivery, read from its log.

pub mod follow;
pub mod state;
