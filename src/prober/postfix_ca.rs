//! The CAs Postfix's smtp(8) trusts, so the prober never trusts fewer.
//!
//! Postfix 3.7 (`tls_set_ca_certificate_info`): with `smtp_tls_CAfile`
//! and `smtp_tls_CApath` both empty (their defaults) it loads no CA at all
//! (OpenSSL's default paths are not used), so a `verify` or `secure`
//! delivery verifies nothing through the WebPKI; with either set it loads
//! them, and adds OpenSSL's default paths only with
//! `tls_append_default_CA = yes` (default `no`). Debian's `main.cf` sets
//! `smtp_tls_CApath = /etc/ssl/certs`.
//!
//! The prober trusts the WebPKI roots, the system bundle
//! ([`SYSTEM_BUNDLE`]), `prober.extra_ca_file` and, with
//! `prober.postfix_config_directory`, every certificate in Postfix's
//! `smtp_tls_CAfile` and `smtp_tls_CApath` (read with `postconf`): a
//! superset of what Postfix trusts, so a certificate the prober finds
//! untrusted is one Postfix would not verify either. When Postfix's
//! settings cannot be read or loaded the prober cannot know, and a chain
//! it does not trust is "unknown", never a reason to refuse.

use std::path::{Path, PathBuf};
use std::process::Command;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The system CA bundle (Debian's `ca-certificates`, OpenSSL's default
/// file there).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Largest CA file read (a full system bundle is about 200 KiB).
pub const MAX_CA_FILE: u64 = 16 * 1024 * 1024;
/// Most files read from a `smtp_tls_CApath` directory.
pub const MAX_CA_PATH_FILES: usize = 4096;
/// Largest `postconf` output read.
const MAX_POSTCONF_OUTPUT: usize = 64 * 1024;

/// Postfix's CA settings for smtp(8), as `postconf -x -h` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostfixCa {
    pub ca_file: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub append_default: bool,
}

/// Why Postfix's CAs are not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the CAs Postfix trusts are not known: {0}")]
pub struct UnknownTrust(pub String);

/// Run `postconf -c DIR -x -h` for the three settings.
pub fn read_settings(config_directory: &Path) -> Result<PostfixCa, UnknownTrust> {
    let out = Command::new("postconf")
        .arg("-c")
        .arg(config_directory)
        .args([
            "-x",
            "-h",
            "smtp_tls_CAfile",
            "smtp_tls_CApath",
            "tls_append_default_CA",
        ])
        .output()
        .map_err(|e| UnknownTrust(format!("cannot run postconf: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(UnknownTrust(format!(
            "postconf -c {} failed: {}",
            config_directory.display(),
            crate::util::text::printable_ascii(err.trim(), 200)
        )));
    }
    if out.stdout.len() > MAX_POSTCONF_OUTPUT {
        return Err(UnknownTrust("postconf printed too much".into()));
    }
    parse_settings(&String::from_utf8_lossy(&out.stdout))
}

/// The three lines `postconf -h` prints, in order.
pub fn parse_settings(text: &str) -> Result<PostfixCa, UnknownTrust> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let [file, path, append] = lines.as_slice() else {
        return Err(UnknownTrust(format!(
            "postconf printed {} lines, not 3",
            lines.len()
        )));
    };
    let some = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let append_default = match append.to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" => true,
        "no" | "false" | "0" | "" => false,
        other => {
            return Err(UnknownTrust(format!(
                "tls_append_default_CA = {other:?} is not yes or no"
            )));
        }
    };
    Ok(PostfixCa {
        ca_file: some(file),
        ca_path: some(path),
        append_default,
    })
}

/// Add every usable certificate of the system bundle; a missing or
/// unreadable bundle adds nothing (the WebPKI roots stay).
pub fn add_system_bundle(roots: &mut RootCertStore, bundle: &Path) -> usize {
    read_bounded(bundle).map_or(0, |bytes| add_pem(roots, &bytes))
}

/// Add what Postfix trusts. An error when a file or directory Postfix
/// names cannot be read, or holds no certificate: then Postfix either
/// fails to start TLS or trusts CAs the prober does not know.
pub fn add_postfix(roots: &mut RootCertStore, ca: &PostfixCa) -> Result<usize, UnknownTrust> {
    let mut added = 0;
    if let Some(file) = &ca.ca_file {
        let bytes = read_bounded(file)
            .map_err(|e| UnknownTrust(format!("smtp_tls_CAfile {}: {e}", file.display())))?;
        let n = add_pem(roots, &bytes);
        if n == 0 {
            return Err(UnknownTrust(format!(
                "smtp_tls_CAfile {}: no usable PEM certificate",
                file.display()
            )));
        }
        added += n;
    }
    if let Some(dir) = &ca.ca_path {
        let err = |e: String| UnknownTrust(format!("smtp_tls_CApath {}: {e}", dir.display()));
        let entries = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?;
        for (i, entry) in entries.enumerate() {
            if i >= MAX_CA_PATH_FILES {
                return Err(err(format!("more than {MAX_CA_PATH_FILES} files")));
            }
            let entry = entry.map_err(|e| err(e.to_string()))?;
            // Files that are not certificates (a README) are skipped, as
            // OpenSSL skips them.
            if let Ok(bytes) = read_bounded(&entry.path()) {
                added += add_pem(roots, &bytes);
            }
        }
    }
    Ok(added)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a file".into());
    }
    if meta.len() > MAX_CA_FILE {
        return Err(format!("larger than {MAX_CA_FILE} bytes"));
    }
    std::fs::read(path).map_err(|e| e.to_string())
}

/// Add the PEM certificates rustls can use; returns how many.
fn add_pem(roots: &mut RootCertStore, bytes: &[u8]) -> usize {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .filter_map(Result::ok)
        .collect();
    let (added, _) = roots.add_parsable_certificates(certs);
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postconf_lines() {
        assert_eq!(
            parse_settings("\n\nno\n").unwrap(),
            PostfixCa {
                ca_file: None,
                ca_path: None,
                append_default: false
            }
        );
        let c = parse_settings("/etc/ssl/ca.pem\n/etc/ssl/certs\nyes\n").unwrap();
        assert_eq!(c.ca_file.as_deref(), Some(Path::new("/etc/ssl/ca.pem")));
        assert_eq!(c.ca_path.as_deref(), Some(Path::new("/etc/ssl/certs")));
        assert!(c.append_default);
        assert!(parse_settings("a\nb\n").is_err());
        assert!(parse_settings("a\nb\nmaybe\n").is_err());
    }

    #[test]
    fn unreadable_postfix_files_are_unknown_trust() {
        let dir = tempfile::tempdir().unwrap();
        let mut roots = RootCertStore::empty();
        let missing = PostfixCa {
            ca_file: Some(dir.path().join("nope.pem")),
            ca_path: None,
            append_default: false,
        };
        let e = add_postfix(&mut roots, &missing).unwrap_err().to_string();
        assert!(
            e.contains("smtp_tls_CAfile") && e.contains("nope.pem"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "junk\n").unwrap();
        let e = add_postfix(
            &mut roots,
            &PostfixCa {
                ca_file: Some(junk),
                ..missing.clone()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no usable PEM certificate"), "{e}");
        let no_dir = PostfixCa {
            ca_file: None,
            ca_path: Some(dir.path().join("missing-dir")),
            append_default: false,
        };
        let e = add_postfix(&mut roots, &no_dir).unwrap_err().to_string();
        assert!(e.contains("smtp_tls_CApath"), "{e}");
        // Empty settings: Postfix trusts nothing; nothing to add.
        let none = PostfixCa {
            ca_file: None,
            ca_path: None,
            append_default: false,
        };
        assert_eq!(add_postfix(&mut roots, &none).unwrap(), 0);
    }

    #[test]
    fn system_bundle_adds_roots_when_present() {
        let mut roots = RootCertStore::empty();
        assert_eq!(
            add_system_bundle(&mut roots, Path::new("/nonexistent/bundle")),
            0
        );
        if Path::new(SYSTEM_BUNDLE).exists() {
            assert!(add_system_bundle(&mut roots, Path::new(SYSTEM_BUNDLE)) > 50);
        }
    }
}
