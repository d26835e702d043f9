//! The published-policy sources of one walk, side by side.
//!
//! When no rule of the policy file matches, every source that applies is
//! asked at once and their waits overlap: a first-contact domain waits
//! for the slowest source's own limit (`dane.lookup_timeout`,
//! `mta_sts.lookup_timeout`, counted from the same start), not for their
//! sum. Precedence is kept: the first source in order with a policy
//! decides, and a lower source's answer is only taken once every higher
//! one has said it has none. Sources are polled in precedence order, so a
//! higher source that answers at once (from its cache) leaves the lower
//! ones unasked.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use super::{Consulted, Consulting, Source};
use crate::engine::key::Destination;

/// Told how each walk that had to wait for a source went (the metrics
/// implement it).
pub trait DiscoveryObserver: Send + Sync {
    /// A walk waited for at least one source; `side_by_side` when two or
    /// more were waited for at the same time.
    fn waited(&self, side_by_side: bool);
}

/// What became of one source in a walk.
pub(super) enum Asked {
    /// Its answer.
    Answered(Consulted),
    /// Not asked, or its answer was not needed (a higher source decided
    /// first); `started` when it was asked.
    Unused { started: bool },
}

/// Ask `sources` (in precedence order, the ones that apply to `dest`) side
/// by side and return what became of each, in the same order. Stops as
/// soon as the deciding source is known.
pub(super) async fn consult_all(
    sources: &[&Arc<dyn Source>],
    dest: &Destination,
    observer: Option<&dyn DiscoveryObserver>,
) -> Vec<Asked> {
    let n = sources.len();
    let mut pending: Vec<Option<Consulting<'_>>> = (0..n).map(|_| None).collect();
    let mut answers: Vec<Option<Consulted>> = (0..n).map(|_| None).collect();
    let mut started = vec![false; n];
    let mut waited = false;
    let mut side_by_side = false;
    let decider = poll_fn(|cx| {
        let mut still = 0;
        for i in 0..n {
            // A higher source decided: the lower ones are not needed.
            if let Some(at) = deciding(&answers[..i]) {
                return Poll::Ready(Some(at));
            }
            if answers[i].is_some() {
                continue;
            }
            let future = pending[i].get_or_insert_with(|| {
                started[i] = true;
                sources[i].consult(dest)
            });
            match future.as_mut().poll(cx) {
                Poll::Ready(answer) => {
                    pending[i] = None;
                    answers[i] = Some(answer);
                }
                Poll::Pending => still += 1,
            }
        }
        if let Some(at) = deciding(&answers) {
            return Poll::Ready(Some(at));
        }
        if still == 0 {
            return Poll::Ready(None);
        }
        waited = true;
        side_by_side |= still > 1;
        Poll::Pending
    })
    .await;
    drop(pending);
    if waited && let Some(o) = observer {
        o.waited(side_by_side);
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| match a {
            Some(a) if decider.is_none_or(|d| i <= d) => Asked::Answered(a),
            _ => Asked::Unused {
                started: started[i],
            },
        })
        .collect()
}

/// The source that decides, once it is known: the first with a policy,
/// every one above it having answered without one.
fn deciding(answers: &[Option<Consulted>]) -> Option<usize> {
    let at = answers
        .iter()
        .position(|a| !matches!(a, Some(Consulted::NoPolicy(_))))?;
    matches!(answers[at], Some(Consulted::Policy(_))).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::engine::decision::{Decision, Level, SourceKind};
    use crate::engine::policy_file::PolicyFile;
    use crate::engine::{Engine, Source};

    /// A source that answers after `yields` polls, saying which other
    /// sources had been asked by then.
    struct Probe {
        kind: SourceKind,
        policy: bool,
        yields: usize,
        started: Arc<[AtomicBool; 2]>,
        index: usize,
    }

    impl Source for Probe {
        fn kind(&self) -> SourceKind {
            self.kind
        }
        fn consult<'a>(&'a self, _dest: &'a Destination) -> Consulting<'a> {
            self.started[self.index].store(true, Ordering::SeqCst);
            Box::pin(async move {
                for _ in 0..self.yields {
                    tokio::task::yield_now().await;
                }
                let other = self.started[1 - self.index].load(Ordering::SeqCst);
                let why = format!("{:?} answered; the other asked: {other}", self.kind);
                if self.policy {
                    Consulted::Policy(Decision {
                        level: Level::Encrypt,
                        policy: Arc::from("encrypt"),
                        source: self.kind,
                        rule: None,
                        matched: None,
                        reason: Arc::from(why),
                        ttl: Duration::from_secs(60),
                        raised: false,
                        temporary: false,
                        published: None,
                    })
                } else {
                    Consulted::NoPolicy(why)
                }
            })
        }
    }

    #[derive(Default)]
    struct Seen(Mutex<Vec<bool>>, AtomicUsize);

    impl DiscoveryObserver for Seen {
        fn waited(&self, side_by_side: bool) {
            self.0.lock().unwrap().push(side_by_side);
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// An engine with a DANE-like and an MTA-STS-like probe: (policy,
    /// polls before answering) each.
    fn engine(
        dane: (bool, usize),
        sts: (bool, usize),
    ) -> (Engine, Arc<[AtomicBool; 2]>, Arc<Seen>) {
        let started: Arc<[AtomicBool; 2]> =
            Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let probe = |kind, (policy, yields), index| -> Arc<dyn Source> {
            Arc::new(Probe {
                kind,
                policy,
                yields,
                started: started.clone(),
                index,
            })
        };
        let sources = vec![
            probe(SourceKind::Dane, dane, 0),
            probe(SourceKind::MtaSts, sts, 1),
        ];
        let seen = Arc::new(Seen::default());
        let policy = PolicyFile::parse("", Path::new("p.toml")).unwrap();
        let e = Engine::with_sources(policy, sources).observed_by(seen.clone());
        (e, started, seen)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_slow_source_waits_side_by_side_with_the_next() {
        let (e, _, seen) = engine((false, 3), (true, 1));
        let x = block_on(e.explain("first.example"));
        assert_eq!(x.decision.source, SourceKind::MtaSts);
        assert!(
            x.steps[1].detail.ends_with("the other asked: true"),
            "{}",
            x.steps[1].detail
        );
        assert_eq!(*seen.0.lock().unwrap(), vec![true]);
    }

    #[test]
    fn a_higher_source_decides_even_when_it_answers_last() {
        let (e, started, seen) = engine((true, 3), (true, 0));
        let d = block_on(e.decide(&Destination::parse("first.example").unwrap()));
        assert_eq!(d.source, SourceKind::Dane);
        assert!(
            started[1].load(Ordering::SeqCst),
            "MTA-STS was asked alongside"
        );
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec![false],
            "only DANE was waited for"
        );
        let x = block_on(e.explain("first.example"));
        assert_eq!(x.steps[2].detail, crate::engine::NOT_USED);
        assert!(!x.steps[2].applied);
    }

    #[test]
    fn an_answer_at_once_leaves_lower_sources_unasked() {
        let (e, started, seen) = engine((true, 0), (true, 0));
        let x = block_on(e.explain("known.example"));
        assert_eq!(x.decision.source, SourceKind::Dane);
        assert!(!started[1].load(Ordering::SeqCst));
        assert_eq!(x.steps[2].detail, crate::engine::NOT_CONSULTED);
        assert_eq!(seen.1.load(Ordering::SeqCst), 0, "nothing was waited for");
    }

    #[test]
    fn no_policy_anywhere_gives_the_default_after_both() {
        let (e, started, seen) = engine((false, 2), (false, 2));
        let d = block_on(e.decide(&Destination::parse("none.example").unwrap()));
        assert_eq!(d.source, SourceKind::Default);
        assert!(started.iter().all(|s| s.load(Ordering::SeqCst)));
        assert_eq!(*seen.0.lock().unwrap(), vec![true]);
    }

    #[test]
    fn a_rule_asks_no_source() {
        let (e, started, seen) = engine((true, 1), (true, 1));
        let e = e.with_policy(
            PolicyFile::parse(
                "[[rule]]\ndomains=[\"ruled.example\"]\ntls=\"forced\"\n",
                Path::new("p.toml"),
            )
            .unwrap(),
        );
        let d = block_on(e.decide(&Destination::parse("ruled.example").unwrap()));
        assert_eq!(d.source, SourceKind::Static);
        assert!(started.iter().all(|s| !s.load(Ordering::SeqCst)));
        assert_eq!(seen.1.load(Ordering::SeqCst), 0);
    }
}
