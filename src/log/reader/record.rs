//! The reader's view of one decision record (written by
//! [`crate::log::record`]): only the fields it filters on or prints, with
//! strings borrowed from the line being read.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// One decision or delivery record. Only the fields the reader uses;
/// everything else (rule, key, map, sender, recipients, future additions)
/// is ignored.
#[derive(Debug, Deserialize)]
pub(super) struct Record<'a> {
    #[serde(borrow)]
    pub(super) ts: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) frontend: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) queue_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) domain: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) tls: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) level: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) policy: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) source: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) reason: Option<Text<'a>>,
    // Delivery records (`frontend` "delivery") only.
    #[serde(borrow)]
    pub(super) recipient: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) relay: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) status: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) tls_trust: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) verdict: Option<Text<'a>>,
}

impl Record<'_> {
    /// The effective Postfix level: `policy` when present, else `level`.
    pub(super) fn effective_level(&self) -> Option<&str> {
        text(&self.policy).or(text(&self.level))
    }

    /// A delivery outcome record rather than a decision.
    pub(super) fn is_delivery(&self) -> bool {
        text(&self.frontend) == Some(DELIVERY)
    }
}

/// The `frontend` of delivery outcome records.
pub(super) const DELIVERY: &str = "delivery";

/// A JSON string borrowed from the input line, or owned when the JSON text
/// contains escapes. serde's own `#[serde(borrow)]` special case only covers
/// a bare `Cow<str>`, not `Option<Cow<str>>`, hence this newtype.
#[derive(Debug)]
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// The string value of an optional field.
pub(super) fn text<'r>(t: &'r Option<Text<'_>>) -> Option<&'r str> {
    t.as_ref().map(|t| &*t.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_borrows_unless_escaped() {
        let line = br#"{"ts":"2026-11-24T10:00:00Z","domain":"a.example","reason":"say \"hi\""}"#;
        let rec: Record<'_> = serde_json::from_slice(line).unwrap();
        assert!(matches!(rec.domain.unwrap().0, Cow::Borrowed("a.example")));
        match rec.reason.unwrap().0 {
            Cow::Owned(s) => assert_eq!(s, "say \"hi\""),
            Cow::Borrowed(s) => panic!("escaped string borrowed: {s}"),
        }
        assert!(rec.queue_id.is_none());
    }
}
