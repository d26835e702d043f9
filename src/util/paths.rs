//! Default paths of files the configuration names.

use std::path::PathBuf;

/// Where the persisted cache lives unless `cache_file` says otherwise.
pub const DEFAULT_CACHE_FILE: &str = "/var/lib/tls-policyd/cache.sqlite";

/// [`DEFAULT_CACHE_FILE`], for a `cache_file` setting's default.
pub fn default_cache_file() -> PathBuf {
    PathBuf::from(DEFAULT_CACHE_FILE)
}
