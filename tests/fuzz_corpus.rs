//! Replays the fuzzing corpus (`fuzz/corpus/<target>/`) and the kept
//! crashing inputs (`fuzz/regressions/<target>/`) through the same checks
//! the `cargo fuzz` targets run (`tls_policyd::fuzzing`), on stable Rust.
//! Every target must have a non-empty corpus. See FUZZING.md.

use std::fs;
use std::path::{Path, PathBuf};

use tls_policyd::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of one directory, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Run `check` on every file, naming the file that fails.
fn replay(target: &str, check: fn(&[u8]), inputs: &[PathBuf]) {
    for path in inputs {
        let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{target}: {} fails its check", path.display());
    }
}

#[test]
fn every_target_has_a_corpus_and_it_passes() {
    for (target, check) in TARGETS {
        let inputs = files(&fuzz_dir().join("corpus").join(target));
        assert!(
            !inputs.is_empty(),
            "fuzz/corpus/{target}/ is missing or empty"
        );
        replay(target, *check, &inputs);
    }
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (target, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("tls_policyd::fuzzing::check_{target}(")),
            "{} does not call check_{target}",
            file.display()
        );
    }
    let listed = files(&fuzz_dir().join("fuzz_targets")).len();
    assert_eq!(listed, TARGETS.len(), "fuzz_targets/ and TARGETS differ");
}

#[test]
fn kept_crashing_inputs_pass() {
    let root = fuzz_dir().join("regressions");
    let mut seen = 0;
    for (target, check) in TARGETS {
        let inputs = files(&root.join(target));
        seen += inputs.len();
        replay(target, *check, &inputs);
    }
    let dirs = fs::read_dir(&root).map_or(0, |d| d.count());
    let known = TARGETS
        .iter()
        .filter(|(t, _)| root.join(t).is_dir())
        .count();
    assert_eq!(
        dirs, known,
        "fuzz/regressions/ has a directory for no target"
    );
    assert!(seen > 0 || dirs == 0);
}
