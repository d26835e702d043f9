//! Before `serve` opens any file: every file the daemon writes (the
//! decision log, the cache file) must be writable, and a daemon started as
//! root refuses to create files in a directory that belongs to another
//! user (the package's `tls-policyd`): they would be root's, and the
//! service's next start would fail on them with "Permission denied".

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, Uid, User, access};

use crate::config::Config;

/// The files `config` has the daemon write, with the key that names each.
pub fn written_files(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut files = Vec::new();
    if config.log.decisions != Path::new("-") {
        files.push(("log.decisions", config.log.decisions.clone()));
    }
    if let Some(d) = config.dane.as_ref().filter(|d| d.enabled) {
        files.push(("dane.cache_file", d.cache_file.clone()));
    }
    if let Some(m) = config.mta_sts.as_ref().filter(|m| m.enabled) {
        files.push(("mta_sts.cache_file", m.cache_file.clone()));
    }
    if let Some(o) = &config.outcomes {
        files.push(("outcomes.state_file", o.state_file.clone()));
    }
    files
}

fn owner_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

/// Check every written file for the user this process runs as
/// (`euid`). The error names the key, the path and the owner it needs.
pub fn check(config: &Config, euid: u32) -> Result<(), String> {
    for (key, file) in written_files(config) {
        check_file(key, &file, euid)?;
    }
    Ok(())
}

fn check_file(key: &str, file: &Path, euid: u32) -> Result<(), String> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir_meta = std::fs::metadata(dir).map_err(|e| {
        format!(
            "key `{key}`: {}: the directory {} is not usable: {e}",
            file.display(),
            dir.display()
        )
    })?;
    if euid == 0 && dir_meta.uid() != 0 {
        let owner = owner_name(dir_meta.uid());
        return Err(format!(
            "key `{key}`: {}: running as root would leave root-owned files in {}, which belongs to {owner}, and the service (running as {owner}) could not open them next time; start it as {owner} (systemctl start tls-policyd, or runuser -u {owner} -- tls-policyd serve ...)",
            file.display(),
            dir.display()
        ));
    }
    let (target, what) = if file.exists() {
        (file, "the file")
    } else {
        (dir, "its directory")
    };
    if access(target, AccessFlags::W_OK).is_err() {
        let owner = std::fs::metadata(target).map_or_else(|_| "?".into(), |m| owner_name(m.uid()));
        return Err(format!(
            "key `{key}`: {}: {what} ({}) is not writable by {} (it belongs to {owner})",
            file.display(),
            target.display(),
            owner_name(euid)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_refuses_a_directory_of_another_user_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("decisions.jsonl");
        // The test directory is the test user's: as that user it is fine.
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(check_file("log.decisions", &file, me), Ok(()));
        if me != 0 {
            // As root (pretended) in a directory of a non-root user.
            let e = check_file("log.decisions", &file, 0).unwrap_err();
            assert!(
                e.contains("running as root would leave root-owned files"),
                "{e}"
            );
            assert!(e.starts_with("key `log.decisions`: "), "{e}");
        }
        let e = check_file("dane.cache_file", &dir.path().join("no/such/x"), me).unwrap_err();
        assert!(e.contains("the directory"), "{e}");
        assert!(e.contains("is not usable"), "{e}");
    }
}
