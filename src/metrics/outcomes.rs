//! Delivery outcomes in metrics: deliveries by verdict, TLS trust and
//! decision, alarms, and the follower's lines by what became of them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Writer;
use crate::engine::decision::Tls;
use crate::engine::outcome::{Alarm, TlsTrust, Verdict};

/// What became of a line the follower read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A delivery status line, judged and recorded.
    Delivery,
    /// A line of smtp/lmtp/tlsproxy that carried TLS or connection facts.
    Fact,
    /// Another program's line, or another instance's.
    Ignored,
    /// An smtp/lmtp line not understood.
    NotUnderstood,
    /// Not a syslog line.
    NotSyslog,
    /// Over `max_line_length`.
    TooLong,
    /// An unfinished line lost to rotation or truncation.
    Cut,
}

impl LineKind {
    pub const ALL: [LineKind; 7] = [
        LineKind::Delivery,
        LineKind::Fact,
        LineKind::Ignored,
        LineKind::NotUnderstood,
        LineKind::NotSyslog,
        LineKind::TooLong,
        LineKind::Cut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Delivery => "delivery",
            LineKind::Fact => "fact",
            LineKind::Ignored => "ignored",
            LineKind::NotUnderstood => "not_understood",
            LineKind::NotSyslog => "not_syslog",
            LineKind::TooLong => "too_long",
            LineKind::Cut => "cut",
        }
    }
}

/// The governing decision's class, or none.
const DECISIONS: [&str; 3] = ["forced", "opportunistic", "none"];

fn decision_index(tls: Option<Tls>) -> usize {
    match tls {
        Some(Tls::Forced) => 0,
        Some(Tls::Opportunistic) => 1,
        None => 2,
    }
}

/// The outcome counters (the registry's methods count into them).
#[derive(Default)]
pub(super) struct OutcomeCounters {
    /// [verdict][trust][decision]
    deliveries: [[[AtomicU64; 3]; TlsTrust::ALL.len()]; Verdict::ALL.len()],
    alarms: [AtomicU64; Alarm::ALL.len()],
    lines: [AtomicU64; LineKind::ALL.len()],
}

impl OutcomeCounters {
    pub(super) fn delivery(&self, verdict: Verdict, trust: TlsTrust, decision: Option<Tls>) {
        self.deliveries[verdict as usize][trust as usize][decision_index(decision)]
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn alarm(&self, alarm: Alarm) {
        self.alarms[alarm as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn lines(&self, kind: LineKind, n: u64) {
        if n > 0 {
            self.lines[kind as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(super) fn deliveries_with(&self, verdict: Verdict) -> u64 {
        self.deliveries[verdict as usize]
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub(super) fn alarms(&self, alarm: Alarm) -> u64 {
        self.alarms[alarm as usize].load(Ordering::Relaxed)
    }

    pub(super) fn render(&self, w: &mut Writer<'_>) {
        let o = self;
        w.header(
            "deliveries_total",
            "counter",
            "Deliveries read from Postfix's log, by verdict, TLS trust and the governing decision.",
        );
        for v in Verdict::ALL {
            for t in TlsTrust::ALL {
                for (i, d) in DECISIONS.iter().enumerate() {
                    let n = o.deliveries[v as usize][t as usize][i].load(Ordering::Relaxed);
                    if n > 0 {
                        let labels = [
                            ("verdict", v.as_str()),
                            ("tls_trust", t.as_str()),
                            ("decision", *d),
                        ];
                        w.sample("deliveries_total", &labels, n);
                    }
                }
            }
        }
        w.header(
            "delivery_alarms_total",
            "counter",
            "Deliveries that need an operator: violations, policy unreachable, forced domains delivered undecided.",
        );
        for a in Alarm::ALL {
            let n = o.alarms[a as usize].load(Ordering::Relaxed);
            w.sample("delivery_alarms_total", &[("alarm", a.as_str())], n);
        }
        w.header(
            "outcome_lines_total",
            "counter",
            "Lines of Postfix's log the outcome follower read, by what became of them.",
        );
        for k in LineKind::ALL {
            let n = o.lines[k as usize].load(Ordering::Relaxed);
            w.sample("outcome_lines_total", &[("kind", k.as_str())], n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::metrics::Metrics;

    #[test]
    fn counted_and_rendered() {
        let m = Metrics::new();
        m.delivery(Verdict::Violation, TlsTrust::None, Some(Tls::Forced));
        m.delivery(Verdict::Verified, TlsTrust::Verified, Some(Tls::Forced));
        m.delivery(Verdict::Verified, TlsTrust::Verified, Some(Tls::Forced));
        m.delivery(Verdict::Undecided, TlsTrust::Trusted, None);
        m.outcome_alarm(Alarm::Violation);
        m.outcome_lines(LineKind::Ignored, 5);
        m.outcome_lines(LineKind::Cut, 0);
        assert_eq!(m.deliveries_with(Verdict::Verified), 2);
        assert_eq!(m.alarms(Alarm::Violation), 1);
        let mut out = String::new();
        m.render(&mut out);
        for want in [
            "tls_policyd_deliveries_total{verdict=\"violation\",tls_trust=\"none\",decision=\"forced\"} 1",
            "tls_policyd_deliveries_total{verdict=\"verified\",tls_trust=\"verified\",decision=\"forced\"} 2",
            "tls_policyd_deliveries_total{verdict=\"undecided\",tls_trust=\"trusted\",decision=\"none\"} 1",
            "tls_policyd_delivery_alarms_total{alarm=\"violation\"} 1",
            "tls_policyd_delivery_alarms_total{alarm=\"policy-unreachable\"} 0",
            "tls_policyd_outcome_lines_total{kind=\"ignored\"} 5",
            "tls_policyd_outcome_lines_total{kind=\"cut\"} 0",
        ] {
            assert!(out.lines().any(|l| l == want), "{want}\n{out}");
        }
    }
}
