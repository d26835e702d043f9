//! Every sample configuration shipped in the repository must load: daemon
//! configs through `Config::load` (and the policy file each one names),
//! policy files through `PolicyFile::load`.

use std::path::{Path, PathBuf};

use tls_policyd::config::Config;
use tls_policyd::engine::policy_file::PolicyFile;

/// Directories holding sample configs, relative to the crate root.
const SAMPLE_DIRS: [&str; 2] = ["postfix-examples", "packaging"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// All `*.toml` files under `dir`, recursively. A missing directory has
/// none.
fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    };
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let path = entry.path();
        let kind = entry
            .file_type()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if kind.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "toml") {
            out.push(path);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Daemon,
    Policy,
}

/// Tells a daemon config from a policy file by its top-level keys.
fn classify(path: &Path) -> Result<Kind, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("not TOML: {e}"))?;
    let is_table = |k: &str| table.get(k).is_some_and(toml::Value::is_table);
    let daemon = is_table("socketmap") || is_table("policy");
    let policy = table.contains_key("default") || table.contains_key("rule");
    match (daemon, policy) {
        (true, false) => Ok(Kind::Daemon),
        (false, true) => Ok(Kind::Policy),
        (true, true) => Err("has both daemon tables and policy keys".into()),
        (false, false) => Err(
            "neither a daemon config ([socketmap] or [policy]) nor a policy file (default or [[rule]])"
                .into(),
        ),
    }
}

/// The policy file a daemon config names, as found in the checkout.
///
/// Production configs name the installed path (`/etc/tls-policyd/policy.toml`);
/// when that does not exist here, the file of the same name shipped next to
/// the config is the one that gets installed there.
fn shipped_policy(config: &Path, named: &Path) -> Result<PathBuf, String> {
    if named.is_file() {
        return Ok(named.to_path_buf());
    }
    let beside = named
        .file_name()
        .filter(|_| named.is_absolute())
        .and_then(|name| Some(config.parent()?.join(name)))
        .filter(|p| p.is_file());
    beside.ok_or_else(|| {
        format!(
            "policy.file {} does not exist (nor does a file of that name next to the config)",
            named.display()
        )
    })
}

/// Loads one sample; returns what kind it was.
fn check(path: &Path) -> Result<Kind, String> {
    let kind = classify(path)?;
    match kind {
        Kind::Daemon => {
            let config = Config::load(path).map_err(|e| e.to_string())?;
            let policy = shipped_policy(path, &config.policy.file)?;
            PolicyFile::load(&policy).map_err(|e| format!("policy.file: {e}"))?;
        }
        Kind::Policy => {
            PolicyFile::load(path).map_err(|e| e.to_string())?;
        }
    }
    Ok(kind)
}

#[test]
// The closure type is figment::Jail's, with its large error type.
#[allow(clippy::result_large_err)]
fn every_shipped_sample_loads() {
    let mut files = Vec::new();
    for dir in SAMPLE_DIRS {
        toml_files(&root().join(dir), &mut files);
    }
    files.sort();

    let mut failures = Vec::new();
    let mut daemon = 0;
    let mut policy = 0;
    // `Config::load` applies TLS_POLICYD_* overrides; the jail clears the
    // environment so the files are checked as written.
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for path in &files {
            match check(path) {
                Ok(Kind::Daemon) => daemon += 1,
                Ok(Kind::Policy) => policy += 1,
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
        Ok(())
    });

    assert!(
        failures.is_empty(),
        "sample configs that do not load:\n{}",
        failures.join("\n")
    );
    assert!(
        files.len() >= 2,
        "expected at least 2 sample configs under {SAMPLE_DIRS:?}, found {files:?}"
    );
    assert!(daemon >= 1, "no daemon config among {files:?}");
    assert!(policy >= 1, "no policy file among {files:?}");
}

#[test]
fn classify_tells_the_kinds_apart() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\n",
            Some(Kind::Daemon),
        ),
        ("[policy]\nfile = \"p.toml\"\n", Some(Kind::Daemon)),
        ("default = \"forced\"\n", Some(Kind::Policy)),
        (
            "[[rule]]\ndomains = [\"a.example\"]\ntls = \"forced\"\n",
            Some(Kind::Policy),
        ),
        ("[package]\nname = \"x\"\n", None),
        ("", None),
    ];
    for (i, (text, want)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        assert_eq!(classify(&path).ok(), want, "{text:?}");
    }
}

#[test]
#[allow(clippy::result_large_err)]
fn check_rejects_broken_samples() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-policyd.toml");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &config,
        "[socketmap]\nlisten = \"inet:127.0.0.1:1\"\n[policy]\nfile = \"policy.toml\"\n",
    )
    .unwrap();
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        let e = check(&config).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");

        std::fs::write(
            &policy,
            "[[rule]]\ndomains = [\"a.example\"]\ntls = \"fast\"\n",
        )
        .unwrap();
        let e = check(&config).unwrap_err();
        assert!(
            e.starts_with("policy.file: ") && e.contains("rule 1"),
            "{e}"
        );
        let e = check(&policy).unwrap_err();
        assert!(e.contains("\"fast\""), "{e}");

        std::fs::write(&policy, "default = \"forced\"\n").unwrap();
        assert_eq!(check(&config), Ok(Kind::Daemon));
        assert_eq!(check(&policy), Ok(Kind::Policy));
        Ok(())
    });
}

#[test]
fn installed_policy_path_maps_to_the_shipped_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let shipped = dir.path().join("policy.toml");
    let installed = Path::new("/nonexistent-tls-policyd-test/policy.toml");
    assert!(shipped_policy(&config, installed).is_err());
    std::fs::write(&shipped, "default = \"forced\"\n").unwrap();
    assert_eq!(shipped_policy(&config, installed), Ok(shipped.clone()));
    assert_eq!(shipped_policy(&config, &shipped), Ok(shipped.clone()));
    // A relative path is already resolved against the config's directory;
    // no second guess for it.
    assert!(shipped_policy(&config, Path::new("elsewhere/policy.toml")).is_err());
}

#[test]
#[allow(clippy::result_large_err)]
fn commented_milter_section_of_the_sample_loads_when_uncommented() {
    let sample = root().join("postfix-examples/tls-policyd.toml");
    let text = std::fs::read_to_string(&sample).unwrap();
    // "# [milter]" up to the next section: drop one "# " from each line.
    let start = text
        .find("# [milter]\n")
        .expect("a commented [milter] section");
    let end = start + text[start..].find("\n[").expect("a section after it") + 1;
    let section: String = text[start..end]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(section.starts_with("[milter]\n"), "{section}");
    let uncommented = format!("{}{section}{}", &text[..start], &text[end..]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tls-policyd.toml");
    std::fs::write(&config, uncommented).unwrap();
    std::fs::copy(
        root().join("postfix-examples/policy.toml"),
        dir.path().join("policy.toml"),
    )
    .unwrap();
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        let c = Config::load(&config).map_err(|e| e.to_string())?;
        let m = c.milter.expect("[milter] parsed");
        assert_eq!(m.listen.to_string(), "inet:127.0.0.1:10029");
        assert_eq!(m.max_recipients, 1000);
        assert!(!m.quarantine);
        Ok(())
    });
}

/// The commented `[mta_sts]` example in the loopback config is a valid
/// section once uncommented, and says what the defaults are.
#[test]
fn commented_mta_sts_example_is_valid() {
    let path = root().join("postfix-examples/tls-policyd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find("#[mta_sts]")
        .expect("a commented [mta_sts] section");
    let section: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter(|l| !l.starts_with("## "))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    assert!(section.contains("cache_file"), "{section}");
    let table: toml::Table = toml::from_str(&section).unwrap();
    let body = toml::to_string(&table["mta_sts"]).unwrap();
    let c: tls_policyd::sources::mta_sts::MtaStsConfig =
        toml::from_str(&body).unwrap_or_else(|e| panic!("{section}\n{e}"));
    c.validate().unwrap();
    let defaults = tls_policyd::sources::mta_sts::MtaStsConfig {
        extra_ca_file: c.extra_ca_file.clone(),
        ..Default::default()
    };
    assert_eq!(c, defaults, "the example shows the defaults");
}

/// The commented `[dane]` example in the loopback config is a valid section
/// once uncommented, and shows the defaults.
#[test]
fn commented_dane_example_is_valid() {
    let path = root().join("postfix-examples/tls-policyd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("#[dane]").expect("a commented [dane] section");
    let section: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter(|l| !l.starts_with("## "))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    let table: toml::Table = toml::from_str(&section).unwrap();
    let body = toml::to_string(&table["dane"]).unwrap();
    let c: tls_policyd::sources::dane::DaneConfig =
        toml::from_str(&body).unwrap_or_else(|e| panic!("{section}\n{e}"));
    c.validate().unwrap();
    assert_eq!(
        c,
        tls_policyd::sources::dane::DaneConfig::default(),
        "the example shows the defaults"
    );
}

/// The commented `[shared]` example in the loopback config is a valid
/// section once uncommented.
#[test]
fn commented_shared_example_is_valid() {
    let path = root().join("postfix-examples/tls-policyd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find("#[shared]")
        .expect("a commented [shared] section");
    let section: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter(|l| !l.starts_with("## "))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    let table: toml::Table = toml::from_str(&section).unwrap();
    let body = toml::to_string(&table["shared"]).unwrap();
    let c: tls_policyd::shared::SharedConfig =
        toml::from_str(&body).unwrap_or_else(|e| panic!("{section}\n{e}"));
    c.validate().unwrap();
    assert_eq!(c.url, "redis://10.0.0.5:6379/2");
    assert!(c.password_file.is_some());
}
