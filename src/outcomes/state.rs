//! Where the outcome follower stopped, kept on disk so that a restart
//! neither reads a line twice nor skips one: one small JSON file, replaced
//! atomically (written beside it, synced, renamed). Two forms: a log file
//! and a position in it (`{"log": PATH, "position": {...}}`, the form
//! files written before the journal have), or the journal and a cursor
//! (`{"journal": "system" | DIR, "cursor": CURSOR}`). Either may carry
//! the connections open at that point (`"connections": [...]`, see
//! [`SavedConnection`]); a list that cannot be read is dropped, the
//! position kept.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::connections::SavedConnection;
use super::follow::Position;
use super::journal::{JournalSource, is_cursor};

/// Longest state file read; a larger one is not ours (the position and
/// [`super::connections::SAVED_CONNECTIONS`] connections of a few hundred
/// bytes each fit).
pub const MAX_STATE_LEN: u64 = 1 << 20;

/// What is saved: the followed log and where reading stopped in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SavedState {
    File(FileState),
    Journal(JournalState),
}

/// A log file and the position in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileState {
    pub log: PathBuf,
    pub position: Position,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient"
    )]
    pub connections: Vec<SavedConnection>,
}

/// A journal and the cursor of the last entry done with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalState {
    pub journal: JournalSource,
    pub cursor: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient"
    )]
    pub connections: Vec<SavedConnection>,
}

/// The saved connections, or none when they cannot be read (another
/// version's form): they only refine verdicts, the position must not be
/// lost over them.
fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SavedConnection>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

impl SavedState {
    /// The connections saved with the position.
    pub fn connections(&self) -> &[SavedConnection] {
        match self {
            SavedState::File(f) => &f.connections,
            SavedState::Journal(j) => &j.connections,
        }
    }

    /// Where to resume the log file `log`; `None` when the state is of
    /// another log (a changed `log` setting starts afresh).
    pub fn position_for(&self, log: &Path) -> Option<Position> {
        match self {
            SavedState::File(f) if f.log == log => Some(f.position),
            _ => None,
        }
    }

    /// Where to resume `journal`; `None` when the state is of another log.
    pub fn cursor_for(&self, journal: &JournalSource) -> Option<&str> {
        match self {
            SavedState::Journal(j) if j.journal == *journal => Some(&j.cursor),
            _ => None,
        }
    }
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
    #[error("{}: the saved cursor is not a journal cursor", path.display())]
    BadCursor { path: PathBuf },
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
    let state: SavedState =
        serde_json::from_slice(&text).map_err(|source| StateError::Invalid {
            path: path.to_path_buf(),
            source,
        })?;
    if let SavedState::Journal(j) = &state {
        if !is_cursor(&j.cursor) {
            return Err(StateError::BadCursor {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(Some(state))
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
    // Only a log path or journal directory that is not UTF-8 cannot be
    // written as JSON.
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

    fn position(offset: u64) -> Position {
        Position {
            dev: 2049,
            ino: 1234,
            offset,
            head_len: 256,
            head_hash: u64::MAX,
        }
    }

    fn state() -> SavedState {
        SavedState::File(FileState {
            log: "/var/log/mail.log".into(),
            position: position(99),
            connections: Vec::new(),
        })
    }

    const CURSOR: &str = "s=ab158500e4864a8ebf3863241088d2a4;i=3;b=0123456789abcdef0123456789abcdef;m=138a;t=6452ede05d400;x=15ffa73e0fe421e4";

    fn journal(source: JournalSource) -> SavedState {
        SavedState::Journal(JournalState {
            journal: source,
            cursor: CURSOR.into(),
            connections: Vec::new(),
        })
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outcomes.json");
        assert!(load(&p).unwrap().is_none());
        save(&p, &state()).unwrap();
        assert_eq!(load(&p).unwrap(), Some(state()));
        let next = SavedState::File(FileState {
            log: "/var/log/mail.log".into(),
            position: position(200),
            connections: Vec::new(),
        });
        save(&p, &next).unwrap();
        assert_eq!(load(&p).unwrap(), Some(next));
        assert!(!dir.path().join("outcomes.json.new").exists());
        for source in [
            JournalSource::System,
            JournalSource::Directory("/var/log/journal/remote".into()),
        ] {
            save(&p, &journal(source.clone())).unwrap();
            assert_eq!(load(&p).unwrap(), Some(journal(source)));
        }
    }

    #[test]
    fn the_forms_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outcomes.json");
        // As written before the journal form existed.
        let old = br#"{"log":"/var/log/mail.log","position":{"dev":2049,"ino":1234,"offset":99,"head_len":256,"head_hash":18446744073709551615}}"#;
        std::fs::write(&p, old).unwrap();
        assert_eq!(load(&p).unwrap(), Some(state()));
        save(&p, &state()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), old);
        for (source, name) in [
            (JournalSource::System, "system"),
            (
                JournalSource::Directory("/srv/journal".into()),
                "/srv/journal",
            ),
        ] {
            save(&p, &journal(source)).unwrap();
            let want = format!(r#"{{"journal":"{name}","cursor":"{CURSOR}"}}"#);
            assert_eq!(String::from_utf8(std::fs::read(&p).unwrap()).unwrap(), want);
        }
    }

    #[test]
    fn connections_go_with_the_position_and_an_unreadable_list_is_dropped() {
        use crate::outcomes::connections::SavedConnection;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outcomes.json");
        let conn = SavedConnection {
            host: "mx".into(),
            program: "postfix/smtp".into(),
            pid: 4932,
            peer: Some("mx-tls.sink.test[127.0.0.21]:25".into()),
            tls: None,
            failures: Vec::new(),
            bound: Some(("93EA59A2534".into(), None)),
        };
        let with = SavedState::File(FileState {
            log: "/var/log/mail.log".into(),
            position: position(99),
            connections: vec![conn.clone()],
        });
        save(&p, &with).unwrap();
        let back = load(&p).unwrap().unwrap();
        assert_eq!(back, with);
        assert_eq!(back.connections(), [conn]);
        // Another version's list: the position is kept, the list dropped.
        let old = br#"{"log":"/var/log/mail.log","position":{"dev":2049,"ino":1234,"offset":99,"head_len":256,"head_hash":18446744073709551615},"connections":[{"process":7}]}"#;
        std::fs::write(&p, old).unwrap();
        assert_eq!(load(&p).unwrap(), Some(state()));
    }

    #[test]
    fn a_changed_log_setting_starts_afresh() {
        let file = state();
        let dir = JournalSource::Directory("/srv/journal".into());
        let system = journal(JournalSource::System);
        assert_eq!(
            file.position_for(Path::new("/var/log/mail.log")),
            Some(position(99))
        );
        assert_eq!(file.position_for(Path::new("/var/log/maillog")), None);
        assert_eq!(file.cursor_for(&JournalSource::System), None);
        assert_eq!(system.cursor_for(&JournalSource::System), Some(CURSOR));
        assert_eq!(system.cursor_for(&dir), None);
        assert_eq!(journal(dir.clone()).cursor_for(&dir), Some(CURSOR));
        assert_eq!(system.position_for(Path::new("/var/log/mail.log")), None);
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
        for bad in [
            r#"{"journal":"system","cursor":"garbage"}"#,
            r#"{"journal":"system","cursor":""}"#,
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = load(&p).unwrap_err();
            assert!(matches!(e, StateError::BadCursor { .. }), "{bad}: {e}");
        }
        for bad in [
            r#"{"journal":"system"}"#,
            r#"{"log":"/var/log/mail.log","cursor":"s=1"}"#,
            r#"{"journal":"system","cursor":"s=1","position":{}}"#,
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = load(&p).unwrap_err();
            assert!(matches!(e, StateError::Invalid { .. }), "{bad}: {e}");
        }
    }
}
