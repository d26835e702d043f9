//! What the front doors that see whole messages (the policy server and
//! the milter) share besides the engine's ruling
//! ([`crate::engine::recipient`]) and their records
//! ([`crate::log::record::Message`]): header values, and turning a panic
//! in a handler into a logged error.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::engine::recipient::MAX_TRACE_HEADER_LEN;
use crate::util::text::printable_ascii;

/// Whether `h` can be used as a header name: 1 to 64 printable ASCII
/// characters, no spaces or `:`.
pub fn valid_header_name(h: &str) -> bool {
    !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

pub fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A header value for `name`, sanitised (printable ASCII, everything else
/// `?`) and cut so that `Name: value` stays within
/// [`MAX_TRACE_HEADER_LEN`].
pub fn header_value(name: &str, value: &str) -> String {
    let room = MAX_TRACE_HEADER_LEN.saturating_sub(name.len() + 2);
    printable_ascii(value, room)
}

/// A future that turns a panic while polling into an error, so one bad
/// request cannot take the connection (or the reply) down with it.
pub struct CatchUnwind<'a, T>(pub Pin<Box<dyn Future<Output = T> + Send + 'a>>);

impl<T> Future for CatchUnwind<'_, T> {
    type Output = Result<T, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

pub fn panic_text(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::Tls;
    use crate::engine::recipient::tests::rcpt;
    use crate::engine::recipient::trace_value;

    #[test]
    fn trace_value_and_header_value_are_bounded() {
        let many: Vec<_> = (0..200)
            .map(|i| {
                rcpt(
                    &format!("domain{i}.example"),
                    Tls::Opportunistic,
                    "may",
                    None,
                )
            })
            .collect();
        let v = trace_value(&many, Some(1));
        assert!(v.contains("more domains"), "{v}");
        let h = header_value("X-TLS-Policy", &v);
        assert!(h.starts_with("domain0.example="), "{h}");
        assert!("X-TLS-Policy: ".len() + h.len() <= MAX_TRACE_HEADER_LEN);
        assert_eq!(header_value("X-T", "a\nb\u{e9}"), "a?b?");
        // Exactly at the limit, and one over.
        let long = "x".repeat(MAX_TRACE_HEADER_LEN);
        assert_eq!(
            header_value("N", &long).len(),
            MAX_TRACE_HEADER_LEN - "N: ".len()
        );
        let fits = "y".repeat(MAX_TRACE_HEADER_LEN - "N: ".len());
        assert_eq!(header_value("N", &fits), fits);
    }

    #[tokio::test]
    async fn catch_unwind_turns_a_panic_into_an_error() {
        let ok = CatchUnwind(Box::pin(async { 7 })).await;
        assert_eq!(ok.ok(), Some(7));
        let bad: Result<u8, _> = CatchUnwind(Box::pin(async { panic!("boom") })).await;
        assert_eq!(panic_text(&bad.unwrap_err()), "boom");
    }
}
