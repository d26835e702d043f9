//! Where the outcome follower stopped, kept on disk so that a restart
//! neither reads a line twice nor skips one: one small JSON file, replaced
//! atomically (written beside it, synced, renamed).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::follow::Position;

/// Longest state file read; a larger one is not ours.
pub const MAX_STATE_LEN: u64 = 4096;

/// What is saved: the followed log and the position in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// The log file the position belongs to (a changed `log` setting
    /// starts afresh).
    pub log: PathBuf,
    pub position: Position,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: larger than {MAX_STATE_LEN} bytes: not a position file", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: not a position file: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The saved state, if there is one (`Ok(None)`: no file yet).
pub fn load(path: &Path) -> Result<Option<SavedState>, StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.len() > MAX_STATE_LEN {
        return Err(StateError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read(path).map_err(io)?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| StateError::Invalid {
            path: path.to_path_buf(),
            source,
        })
}

/// Replace the saved state: a crash leaves the old file or the new one,
/// never a mix.
pub fn save(path: &Path, state: &SavedState) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    // Only a log path that is not UTF-8 cannot be written as JSON.
    let text =
        serde_json::to_vec(state).map_err(|e| io(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&text).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SavedState {
        SavedState {
            log: "/var/log/mail.log".into(),
            position: Position {
                dev: 2049,
                ino: 1234,
                offset: 99,
                head_len: 256,
                head_hash: u64::MAX,
            },
        }
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outcomes.json");
        assert!(load(&p).unwrap().is_none());
        save(&p, &state()).unwrap();
        assert_eq!(load(&p).unwrap(), Some(state()));
        let mut next = state();
        next.position.offset = 200;
        save(&p, &next).unwrap();
        assert_eq!(load(&p).unwrap(), Some(next));
        assert!(!dir.path().join("outcomes.json.new").exists());
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outcomes.json");
        std::fs::write(&p, b"{\"log\": 3}").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: not a position file", p.display())),
            "{e}"
        );
        // Exactly at the limit is read (and found invalid); one over is refused.
        std::fs::write(&p, vec![b' '; MAX_STATE_LEN as usize]).unwrap();
        assert!(matches!(load(&p), Err(StateError::Invalid { .. })));
        std::fs::write(&p, vec![b' '; MAX_STATE_LEN as usize + 1]).unwrap();
        assert!(matches!(load(&p), Err(StateError::TooLarge { .. })));
    }
}
