//! `tls-policyd probe`: probe a domain's mail servers for STARTTLS now.

use std::path::Path;

use serde_json::json;

use crate::engine::Engine;
use crate::frontends::policy_server;
use crate::prober::{self, Prober};

/// `tls-policyd probe`: probe a domain's mail servers now, then show what
/// was found, the decision for the domain and what the policy server would
/// answer at RCPT with that knowledge.
pub fn probe(config_path: &Path, domain: &str, as_json: bool) -> Result<String, String> {
    let (config, policy) = super::load(config_path)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let resolver = crate::dns::build_resolver(&config.dns).map_err(|e| format!("dns: {e}"))?;
        let prober = Prober::new(config.prober.clone(), resolver).map_err(|e| e.to_string())?;
        let found = prober.probe(domain).await;
        let engine = Engine::new(policy);
        let settings = config
            .policy_server
            .as_ref()
            .map(policy_server::PolicyServerSettings::from)
            .unwrap_or_default();
        let (decision, action) =
            policy_server::rcpt_answer(&engine, domain, &settings, &prober).await;
        Ok(if as_json {
            let mut v: serde_json::Value = serde_json::from_str(&prober::render_json(&found))
                .map_err(|e| format!("cannot render the probe: {e}"))?;
            v["decision"] = json!({
                "tls": decision.tls(),
                "level": decision.policy.as_ref(),
                "source": decision.source,
                "rule": decision.rule,
                "reason": decision.reason.as_ref(),
            });
            v["policy_server_answer"] = json!(action);
            let mut text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
            text.push('\n');
            text
        } else {
            let mut text = prober::render_text(&found);
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text += &format!(
                "decision     {} TLS, Postfix level \"{}\" (source {}{})\n",
                decision.tls(),
                decision.policy,
                decision.source,
                decision
                    .rule
                    .map(|r| format!(", rule {r}"))
                    .unwrap_or_default()
            );
            text += &format!("reason       {}\n", decision.reason);
            text += &format!("at RCPT      {action}\n");
            text
        })
    })
}
