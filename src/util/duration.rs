//! Durations in configuration files, written like `"30s"` or `"5m"`.

/// `#[serde(with = "crate::util::duration::human")]`: durations written
/// like `"30s"` or `"5m"`.
pub mod human {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"30s\" or \"5m\": {e}"
            ))
        })
    }
}
