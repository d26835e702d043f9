//! Reload (SIGHUP): the configuration and the policy file read again and
//! swapped in at once when both load cleanly, and the settings that only
//! a restart applies named.

use std::sync::Arc;
use std::time::SystemTime;

use super::{Context, StartError, live_config};
use crate::config::Config;
use crate::engine::policy_file::PolicyFile;
use crate::listen::{ListenAddr, SocketOptions};
use crate::log::record::Target;

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub rules: usize,
    /// Settings that only take effect on restart and differ now.
    pub needs_restart: Vec<&'static str>,
}

impl Context {
    /// SIGHUP: reopen the decision log (logrotate), then re-read the config
    /// and the policy file. Nothing changes unless both load cleanly: a
    /// broken file leaves the running policy in place.
    pub fn reload(&self) -> Result<ReloadReport, StartError> {
        let result = self.reload_inner();
        match &result {
            Ok(_) => self.metrics.reload(Ok(())),
            Err(e) => {
                self.metrics.error("reload", "invalid_config");
                self.metrics.reload(Err(e.to_string()));
            }
        }
        result
    }

    fn reload_inner(&self) -> Result<ReloadReport, StartError> {
        let old = self.config.load_full();
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                self.log.reopen(Target::from_setting(&old.log.decisions));
                return Err(StartError::Config(e));
            }
        };
        let policy = match PolicyFile::load(&new.policy.file) {
            Ok(p) => p,
            Err(e) => {
                self.log.reopen(Target::from_setting(&old.log.decisions));
                return Err(StartError::Policy(e));
            }
        };
        let rules = policy.rules().len();
        let mut needs_restart = Vec::new();
        let enabled = |c: &Config| c.mta_sts.as_ref().filter(|m| m.enabled).cloned();
        match (enabled(&old), enabled(&new), &self.mta_sts) {
            (Some(o), Some(n), Some(sts)) => {
                if let Err(e) = sts.reconfigure(&n) {
                    self.log.reopen(Target::from_setting(&old.log.decisions));
                    return Err(StartError::MtaSts(e));
                }
                if o.cache_file != n.cache_file {
                    needs_restart.push("mta_sts.cache_file");
                }
                if o.concurrency != n.concurrency {
                    needs_restart.push("mta_sts.concurrency");
                }
                if o.max_pending != n.max_pending {
                    needs_restart.push("mta_sts.max_pending");
                }
            }
            (None, None, _) => {}
            _ => needs_restart.push("mta_sts"),
        }
        listener_changes(
            old.socketmap
                .as_ref()
                .map(|c| (&c.listen, c.max_connections, c.socket_options())),
            new.socketmap
                .as_ref()
                .map(|c| (&c.listen, c.max_connections, c.socket_options())),
            LISTENER_KEYS[0],
            &mut needs_restart,
        );
        listener_changes(
            old.policy_server
                .as_ref()
                .map(|c| (&c.listen, c.max_connections, c.socket_options())),
            new.policy_server
                .as_ref()
                .map(|c| (&c.listen, c.max_connections, c.socket_options())),
            LISTENER_KEYS[1],
            &mut needs_restart,
        );
        listener_changes(
            old.milter
                .as_ref()
                .map(|c| (&c.listen, c.max_connections, c.socket_options())),
            new.milter
                .as_ref()
                .map(|c| (&c.listen, c.max_connections, c.socket_options())),
            LISTENER_KEYS[2],
            &mut needs_restart,
        );
        if old.prober != new.prober {
            needs_restart.push("prober");
        }
        if old.dns != new.dns {
            needs_restart.push("dns");
        }
        if old.runtime != new.runtime {
            needs_restart.push("runtime.threads");
        }
        if old.dane != new.dane {
            needs_restart.push("dane");
        }
        if old.log.level != new.log.level {
            needs_restart.push("log.level");
        }
        if old.metrics != new.metrics {
            needs_restart.push("metrics");
        }
        if old.outcomes != new.outcomes {
            needs_restart.push("outcomes");
        }
        if old.shared != new.shared {
            needs_restart.push("shared");
        }
        let on = |c: &Config| {
            c.tlsrpt
                .as_ref()
                .filter(|t| t.enabled)
                .map(|t| (t.cache_file.clone(), t.extra_ca_file.clone()))
        };
        if on(&old) != on(&new) {
            needs_restart.push("tlsrpt");
        }
        // One swap: the policy file and every front door's settings.
        let old_live = self.live.load_full();
        let live = live_config(old_live.engine.with_policy(policy), &new, Some(&old_live));
        self.live.store(Arc::new(live));
        // The old policy file goes with the last request that holds it
        // (usually this one): hand its memory back to the system.
        drop(old_live);
        crate::memory::release_free_memory();
        self.log.reopen(Target::from_setting(&new.log.decisions));
        self.config.store(Arc::new(new));
        self.last_reload.store(Arc::new(SystemTime::now()));
        Ok(ReloadReport {
            rules,
            needs_restart,
        })
    }
}

/// Per front door: its section and the keys of its listener settings.
const LISTENER_KEYS: [[&str; 4]; 3] = [
    [
        "socketmap",
        "socketmap.listen",
        "socketmap.max_connections",
        "socketmap.socket_*",
    ],
    [
        "policy_server",
        "policy_server.listen",
        "policy_server.max_connections",
        "policy_server.socket_*",
    ],
    [
        "milter",
        "milter.listen",
        "milter.max_connections",
        "milter.socket_*",
    ],
];

/// A front door's listener settings (address, connection limit, socket
/// options) take effect on restart, as does adding or removing the front
/// door: push the keys that changed.
fn listener_changes(
    old: Option<(&ListenAddr, usize, SocketOptions)>,
    new: Option<(&ListenAddr, usize, SocketOptions)>,
    [section, listen, max, socket]: [&'static str; 4],
    out: &mut Vec<&'static str>,
) {
    match (old, new) {
        (Some(o), Some(n)) => {
            if o.0 != n.0 {
                out.push(listen);
            }
            if o.1 != n.1 {
                out.push(max);
            }
            if o.2 != n.2 {
                out.push(socket);
            }
        }
        (None, None) => {}
        _ => out.push(section),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_changes_name_what_needs_a_restart() {
        let a: ListenAddr = "inet:127.0.0.1:1".parse().unwrap();
        let b: ListenAddr = "inet:127.0.0.1:2".parse().unwrap();
        let group = SocketOptions {
            group: Some("postfix".into()),
            ..SocketOptions::default()
        };
        let keys = LISTENER_KEYS[2];
        let run = |old, new| {
            let mut out = Vec::new();
            listener_changes(old, new, keys, &mut out);
            out
        };
        let none: Vec<&str> = Vec::new();
        assert_eq!(run(None, None), none);
        let same = Some((&a, 8, SocketOptions::default()));
        assert_eq!(run(same.clone(), same.clone()), none);
        assert_eq!(run(None, same.clone()), ["milter"]);
        assert_eq!(run(same.clone(), None), ["milter"]);
        assert_eq!(
            run(same, Some((&b, 9, group))),
            ["milter.listen", "milter.max_connections", "milter.socket_*"]
        );
    }
}
