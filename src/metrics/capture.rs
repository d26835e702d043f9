//! The operational log's warnings and errors, kept for `status`.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use super::{MAX_ERROR_TEXT, Metrics};

/// A `tracing` layer that hands every warning and error to
/// [`Metrics::log_event`], so `status` can show the last ones.
pub struct ErrorCapture {
    metrics: Arc<Metrics>,
}

impl ErrorCapture {
    pub fn new(metrics: Arc<Metrics>) -> ErrorCapture {
        ErrorCapture { metrics }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorCapture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warn",
            _ => return,
        };
        let mut v = FieldText::default();
        event.record(&mut v);
        self.metrics
            .log_event(level, event.metadata().target(), v.finish());
    }
}

/// Formats an event the way the log line shows it: the message, then
/// `name=value` fields.
#[derive(Default)]
struct FieldText {
    message: String,
    fields: String,
}

impl FieldText {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else if self.message.is_empty() {
            self.fields
        } else {
            format!("{} {}", self.message, self.fields)
        }
    }

    fn push(&mut self, name: &str, value: fmt::Arguments<'_>) {
        // Stop formatting once past the limit: a huge field must not cost
        // memory.
        if self.message.len() + self.fields.len() > MAX_ERROR_TEXT {
            return;
        }
        if name == "message" {
            let _ = self.message.write_fmt(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{name}={value}");
        }
    }
}

impl tracing::field::Visit for FieldText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.push("message", format_args!("{value}"));
        } else {
            self.push(field.name(), format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.push(field.name(), format_args!("{value:?}"));
    }
}

pub(super) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_capture_layer_formats_fields() {
        use tracing_subscriber::layer::SubscriberExt;
        let m = Arc::new(Metrics::new());
        let subscriber = tracing_subscriber::registry().with(ErrorCapture::new(m.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(peer = "unix:/x", bytes = 3, "client closed mid-request");
            tracing::error!(error = %"boom", "reload failed");
        });
        let r = m.recent_errors();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].level, "warn");
        assert_eq!(
            r[0].message,
            "client closed mid-request peer=\"unix:/x\" bytes=3"
        );
        assert_eq!(r[1].message, "reload failed error=boom");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let mut long = "é".repeat(MAX_ERROR_TEXT);
        truncate_utf8(&mut long, MAX_ERROR_TEXT - 1);
        assert_eq!(long.len(), MAX_ERROR_TEXT - 2);
    }
}
