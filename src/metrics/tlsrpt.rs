//! TLS-RPT in metrics: delivery attempts counted as sessions (or not),
//! and reports by what became of them.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Writer;

/// What became of a delivery attempt the TLS-RPT counter saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Successful,
    Failed,
    /// A delivery of a report itself: not counted.
    Report,
    /// Not a session of the domain's (no server reached, LMTP, this
    /// host's own failure), or the domain publishes no TLS-RPT record.
    NotCounted,
}

impl SessionKind {
    pub const ALL: [SessionKind; 4] = [
        SessionKind::Successful,
        SessionKind::Failed,
        SessionKind::Report,
        SessionKind::NotCounted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Successful => "successful",
            SessionKind::Failed => "failed",
            SessionKind::Report => "report",
            SessionKind::NotCounted => "not_counted",
        }
    }
}

/// What became of a report for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportResult {
    /// Built and kept (once per domain and day).
    Built,
    Sent,
    /// A try failed; tried again later.
    Retry,
    /// Given up.
    Failed,
    /// `[shared]`: left to another host of the fleet, which sent it.
    Fleet,
}

impl ReportResult {
    pub const ALL: [ReportResult; 5] = [
        ReportResult::Built,
        ReportResult::Sent,
        ReportResult::Retry,
        ReportResult::Failed,
        ReportResult::Fleet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportResult::Built => "built",
            ReportResult::Sent => "sent",
            ReportResult::Retry => "retry",
            ReportResult::Failed => "failed",
            ReportResult::Fleet => "fleet",
        }
    }
}

#[derive(Default)]
pub(super) struct TlsRptCounters {
    sessions: [AtomicU64; SessionKind::ALL.len()],
    reports: [AtomicU64; ReportResult::ALL.len()],
}

impl TlsRptCounters {
    pub(super) fn session(&self, k: SessionKind) {
        self.sessions[k as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn report(&self, r: ReportResult) {
        self.reports[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions by [`SessionKind`], reports by [`ReportResult`], in their
    /// `ALL` order.
    pub(super) fn counts(&self) -> (Vec<u64>, Vec<u64>) {
        let load = |a: &[AtomicU64]| a.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (load(&self.sessions), load(&self.reports))
    }

    pub(super) fn render(&self, w: &mut Writer<'_>) {
        w.header(
            "tlsrpt_sessions_total",
            "counter",
            "Delivery attempts seen for TLS reports, by what they counted as.",
        );
        for k in SessionKind::ALL {
            let n = self.sessions[k as usize].load(Ordering::Relaxed);
            w.sample("tlsrpt_sessions_total", &[("result", k.as_str())], n);
        }
        w.header(
            "tlsrpt_reports_total",
            "counter",
            "TLS reports built, and sent, retried or given up per destination.",
        );
        for r in ReportResult::ALL {
            let n = self.reports[r as usize].load(Ordering::Relaxed);
            w.sample("tlsrpt_reports_total", &[("result", r.as_str())], n);
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
        m.tlsrpt_session(SessionKind::Failed);
        m.tlsrpt_session(SessionKind::Failed);
        m.tlsrpt_report(ReportResult::Sent);
        let mut out = String::new();
        m.render(&mut out);
        for want in [
            "tls_policyd_tlsrpt_sessions_total{result=\"failed\"} 2",
            "tls_policyd_tlsrpt_sessions_total{result=\"report\"} 0",
            "tls_policyd_tlsrpt_reports_total{result=\"sent\"} 1",
            "tls_policyd_tlsrpt_reports_total{result=\"failed\"} 0",
        ] {
            assert!(out.lines().any(|l| l == want), "{want}\n{out}");
        }
    }
}
