//! What the prober knows, as a test sets it: the TLS knowledge source
//! behind early refusals and quarantine, for front doors run in process.

use std::collections::HashMap;
use std::sync::Mutex;

use tls_policyd::engine::refusal::{Capability, TlsKnowledge};

/// The domain whose knowledge lookup panics, like a broken prober would.
pub const PANIC_DOMAIN: &str = "panic.bank.example";

/// TLS knowledge from a map; records what was asked and scheduled.
#[derive(Default)]
pub struct MapKnowledge {
    known: Mutex<HashMap<String, Capability>>,
    asked: Mutex<Vec<String>>,
    scheduled: Mutex<Vec<String>>,
}

impl MapKnowledge {
    pub fn set(&self, domain: &str, cap: Capability) {
        self.known.lock().unwrap().insert(domain.into(), cap);
    }
    /// The domains looked up, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
    /// The domains scheduled for a probe, in order.
    pub fn scheduled(&self) -> Vec<String> {
        self.scheduled.lock().unwrap().clone()
    }
}

impl TlsKnowledge for MapKnowledge {
    fn known(&self, domain: &str) -> Option<Capability> {
        if domain == PANIC_DOMAIN {
            panic!("prober state is broken");
        }
        self.asked.lock().unwrap().push(domain.into());
        self.known.lock().unwrap().get(domain).cloned()
    }
    fn schedule(&self, domain: &str) {
        self.scheduled.lock().unwrap().push(domain.into());
    }
}

/// What a prober would know about a domain whose mail servers do not
/// offer STARTTLS.
pub fn no_starttls(domain: &str) -> Capability {
    Capability::NoStarttls {
        detail: format!("mx1.{domain}[192.0.2.10]: no STARTTLS in EHLO reply"),
    }
}
