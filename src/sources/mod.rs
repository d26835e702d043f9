//! Policy sources, in precedence order: the static policy file first, then
//! published policies, then the default.

pub mod dane;
pub mod mta_sts;
pub mod name_index;
pub mod static_file;
