//! The decision log as the benchmark reads it: records counted by kind
//! from where the last read stopped.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Decision records counted by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Records {
    pub socketmap: usize,
    pub policy_recipient: usize,
    pub policy_message: usize,
    pub milter: usize,
}

/// Reads the decision log from where it was last read.
pub struct LogTail {
    pub path: PathBuf,
    pub offset: u64,
    pub partial: Vec<u8>,
}

impl LogTail {
    pub fn read_new(&mut self) -> Records {
        let mut counts = Records::default();
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return counts;
        };
        f.seek(SeekFrom::Start(self.offset))
            .expect("seek decision log");
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).expect("read decision log");
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return counts;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = std::str::from_utf8(line).expect("decision log is UTF-8");
            if line.contains(r#""frontend":"socketmap""#) {
                counts.socketmap += 1;
            } else if line.contains(r#""frontend":"milter""#) {
                counts.milter += 1;
            } else if line.contains(r#""frontend":"policy""#) {
                if line.contains(r#""recipients":"#) {
                    counts.policy_message += 1;
                } else {
                    counts.policy_recipient += 1;
                }
            } else {
                panic!("unexpected decision record: {line}");
            }
        }
        counts
    }
}

pub fn add(a: Records, b: Records) -> Records {
    Records {
        socketmap: a.socketmap + b.socketmap,
        policy_recipient: a.policy_recipient + b.policy_recipient,
        policy_message: a.policy_message + b.policy_message,
        milter: a.milter + b.milter,
    }
}
