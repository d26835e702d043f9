//! Checks run on arbitrary input, one per parser of outside input: the
//! `cargo fuzz` targets in `fuzz/` and the corpus replay in
//! `tests/fuzz_corpus.rs` call the same functions. Each returns normally
//! when what must hold holds, and panics (with the reason) when not.
//! A thin layer over the parsers: no parsing of its own beyond cutting
//! the input into the pieces a parser takes. See FUZZING.md.

mod codecs;
mod logs;
mod milter;
mod shared;
mod sources;
mod texts;

use std::sync::OnceLock;

pub use codecs::{check_netstring, check_policy_attrs, check_socketmap};
pub use logs::{check_journal_entry, check_postfix_log};
pub use milter::check_milter;
pub use shared::{check_shared_value, check_tlsrpt_snapshot};
pub use sources::{
    check_dane_answer, check_mta_sts_policy, check_mta_sts_record, check_tlsrpt_record,
};
pub use texts::{check_config, check_policy_file};

/// One check: returns when what must hold of the input holds, panics
/// when not.
pub type Check = fn(&[u8]);

/// Every target: its name (the `fuzz/fuzz_targets/<name>.rs` file and the
/// `fuzz/corpus/<name>/` directory) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("netstring", check_netstring),
    ("socketmap", check_socketmap),
    ("policy_attrs", check_policy_attrs),
    ("milter", check_milter),
    ("mta_sts_record", check_mta_sts_record),
    ("mta_sts_policy", check_mta_sts_policy),
    ("tlsrpt_record", check_tlsrpt_record),
    ("dane_answer", check_dane_answer),
    ("policy_file", check_policy_file),
    ("config", check_config),
    ("postfix_log", check_postfix_log),
    ("journal_entry", check_journal_entry),
    ("shared_value", check_shared_value),
    ("tlsrpt_snapshot", check_tlsrpt_snapshot),
];

/// The domain the checks' policy file forces (with its subdomains).
pub const FORCED_DOMAIN: &str = "forced.example";

/// The policy file the checks decide with: one forced domain and its
/// subdomains, one forced domain that lets `TLS-Required: No` relax it,
/// a sender rule, and an opportunistic default.
pub const POLICY: &str = r#"
default = "opportunistic"

[[rule]]
domains = ["forced.example", ".forced.example"]
tls = "forced"
reason = "fuzzing: forced"

[[rule]]
domains = ["relaxable.example"]
tls = "verify"
allow_tls_required_no = true

[[sender_rule]]
senders = ["ceo@sender.example"]
tls = "forced"
"#;

/// A single-threaded runtime for the engine's async calls.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// The engine over [`POLICY`], no sources.
fn engine() -> &'static crate::engine::Engine {
    static ENGINE: OnceLock<crate::engine::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let p = crate::engine::policy_file::PolicyFile::parse(
            POLICY,
            std::path::Path::new("fuzz-policy.toml"),
        )
        .expect("the fuzzing policy parses");
        crate::engine::Engine::new(p)
    })
}

/// Whether a (normalised or raw) host name is [`FORCED_DOMAIN`] or under
/// it: ASCII case and one trailing dot ignored.
fn names_forced(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    h == FORCED_DOMAIN
        || h.strip_suffix(FORCED_DOMAIN)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Cut points for feeding `data` in pieces, derived from the data itself
/// (so a corpus file always replays the same way): chunk sizes 1..=17.
fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let mut seed: u32 = data.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = usize::try_from((seed >> 16) % 17 + 1)
            .unwrap_or(1)
            .min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

/// A cursor over fuzz input for targets that build structured calls.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// A length-prefixed piece: a length byte under 255 is the length;
    /// 255 adds eight times the next byte (up to 2295 bytes).
    fn piece(&mut self) -> &'a [u8] {
        let mut n = usize::from(self.byte().unwrap_or(0));
        if n == 255 {
            n += 8 * usize::from(self.byte().unwrap_or(0));
        }
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }

    fn text(&mut self) -> String {
        String::from_utf8_lossy(self.piece()).into_owned()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_names() {
        assert!(names_forced("forced.example"));
        assert!(names_forced("MX.Forced.Example."));
        assert!(!names_forced("notforced.example"));
        assert!(!names_forced("forced.example.org"));
    }

    #[test]
    fn chunks_cover_the_input_in_order() {
        let data: Vec<u8> = (0..=255).collect();
        let c = chunks(&data);
        assert!(c.len() > 1);
        assert_eq!(c.concat(), data);
        assert!(chunks(b"").is_empty());
    }

    #[test]
    fn the_policy_forces_its_domain() {
        let (_, d) = runtime().block_on(engine().decide_key("a.forced.example"));
        assert_eq!(d.tls(), crate::engine::decision::Tls::Forced);
    }
}
