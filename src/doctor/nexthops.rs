//! Next hops that change the socketmap key. Postfix asks
//! `smtp_tls_policy_maps` for the next-hop destination: the recipient
//! domain, or, when `relayhost`, `default_transport` or a `transport_maps`
//! entry names a next hop, that next hop verbatim (`[relay.example]:587`).
//! A rule for the recipient domain then does not govern the mail. For the
//! domains the policy file forces (the first [`MAX_DOMAINS`]), doctor finds
//! where Postfix sends their mail ([`route`], pure; `transport_maps` asked
//! through `postmap -q`) and asks the daemon what it answers for that next
//! hop.

use std::collections::BTreeMap;

use super::checks::{CheckOutcome, OurSocketmap, postfix_name};
use super::live::{PostmapAnswer, postmap, weak};
use super::postconf::{Item, PostfixConfig, list_items};
use crate::engine::decision::Tls;
use crate::engine::policy_file::PolicyFile;

/// Forced domains whose route is checked (each costs a few `postmap -q`).
pub const MAX_DOMAINS: usize = 20;

/// Where mail for a domain goes, as far as the TLS policy lookup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The recipient domain is the lookup key: its rule applies.
    Domain,
    /// Another next hop is the key.
    NextHop {
        key: String,
        /// What sends it there, in words (`relayhost = [x]:587`).
        via: String,
    },
    /// A transport that is not an SMTP/LMTP client (`error`, `discard`,
    /// `local`, ...): no TLS question.
    NotSmtp { transport: String, via: String },
}

/// A `transport:nexthop` value split; a value without `:` is a transport.
fn split(value: &str) -> (&str, &str) {
    match value.split_once(':') {
        Some((t, n)) => (t.trim(), n.trim()),
        None => (value.trim(), ""),
    }
}

/// The route of a domain's mail: `transport` the `transport_maps` answer
/// for it (and what matched), then `default_transport` and `relayhost`
/// (main.cf's values). `smtp_like` tells whether a master.cf transport
/// name runs smtp(8) or lmtp(8).
pub fn route(
    transport: Option<(&str, &str)>,
    default_transport: &str,
    relayhost: &str,
    smtp_like: impl Fn(&str) -> bool,
) -> Route {
    let (dt_name, dt_hop) = split(default_transport);
    if let Some((answer, matched)) = transport {
        let (t, hop) = split(answer);
        let via = format!("transport_maps ({matched} -> {answer})");
        let channel = if t.is_empty() { dt_name } else { t };
        if !channel.is_empty() && !smtp_like(channel) {
            return Route::NotSmtp {
                transport: channel.to_string(),
                via,
            };
        }
        if !hop.is_empty() {
            return Route::NextHop {
                key: hop.to_string(),
                via,
            };
        }
        if !t.is_empty() {
            // `transport` or `transport:` names no next hop: the recipient
            // domain, whatever relayhost says (transport(5)).
            return Route::Domain;
        }
        // `:` changes nothing: the default route below.
    }
    if !dt_name.is_empty() && !smtp_like(dt_name) {
        return Route::NotSmtp {
            transport: dt_name.to_string(),
            via: format!("default_transport = {default_transport}"),
        };
    }
    if !dt_hop.is_empty() {
        return Route::NextHop {
            key: dt_hop.to_string(),
            via: format!("default_transport = {default_transport}"),
        };
    }
    let relay = list_items(relayhost).into_iter().find_map(|i| match i {
        Item::Word(w) => Some(w),
        Item::Group(_) => None,
    });
    match relay {
        Some(r) => Route::NextHop {
            key: r,
            via: format!("relayhost = {relayhost}"),
        },
        None => Route::Domain,
    }
}

/// The keys Postfix's transport lookup tries for `domain`: the domain,
/// each `.parent`, then `*`.
pub fn transport_keys(domain: &str) -> Vec<String> {
    let mut keys = vec![domain.to_string()];
    let mut rest = domain;
    while let Some((_, parent)) = rest.split_once('.') {
        keys.push(format!(".{parent}"));
        rest = parent;
    }
    keys.push("*".into());
    keys
}

/// The `transport_maps` answer for `domain` and the key that matched.
fn transport_answer(
    pf: &PostfixConfig,
    domain: &str,
    out: &mut CheckOutcome,
) -> Option<(String, String)> {
    let tables: Vec<String> = list_items(pf.param("transport_maps"))
        .into_iter()
        .filter_map(|i| match i {
            Item::Word(w) => Some(w),
            Item::Group(_) => None,
        })
        .collect();
    for key in transport_keys(domain) {
        for t in &tables {
            match postmap(pf, t, &key) {
                PostmapAnswer::Found(v) => return Some((v, format!("{key} in {t}"))),
                PostmapAnswer::NotFound => {}
                PostmapAnswer::Failed(e) => {
                    out.note(
                        format!("cannot read transport_maps table {t} ({e}): where mail for {domain} goes was not checked"),
                        None,
                    );
                    return None;
                }
            }
        }
    }
    None
}

/// Check the route of each forced domain's mail.
pub fn check(pf: &PostfixConfig, sm: &OurSocketmap, policy: &PolicyFile, out: &mut CheckOutcome) {
    let forced: Vec<&str> = policy
        .exact_domains_where(|r| r.level.tls() == Tls::Forced)
        .take(MAX_DOMAINS + 1)
        .collect();
    if forced.is_empty() {
        return;
    }
    if !pf.param("sender_dependent_relayhost_maps").is_empty() {
        out.note(
            format!(
                "sender_dependent_relayhost_maps = {}: the next hop (and so the policy key) depends on the sender; a rule for a recipient domain does not govern mail sent through those relays unless the relay is named too",
                pf.param("sender_dependent_relayhost_maps")
            ),
            None,
        );
    }
    let smtp_like = |name: &str| {
        pf.services.iter().any(|s| {
            s.name == name && s.kind == "unix" && (s.command == "smtp" || s.command == "lmtp")
        })
    };
    // Next-hop key -> (what sends mail there, the forced domains).
    let mut hops: BTreeMap<String, (String, Vec<&str>)> = BTreeMap::new();
    for &domain in forced.iter().take(MAX_DOMAINS) {
        let answer = transport_answer(pf, domain, out);
        let r = route(
            answer.as_ref().map(|(a, m)| (a.as_str(), m.as_str())),
            pf.param("default_transport"),
            pf.param("relayhost"),
            smtp_like,
        );
        match r {
            Route::Domain => {}
            Route::NotSmtp { transport, via } => out.note(
                format!("{via}: mail for {domain} goes to the {transport} transport, which asks no TLS policy"),
                None,
            ),
            Route::NextHop { key, via } => hops.entry(key).or_insert((via, Vec::new())).1.push(domain),
        }
    }
    if forced.len() > MAX_DOMAINS {
        out.note(
            format!(
                "the routes of the first {MAX_DOMAINS} forced domains were checked, not the rest"
            ),
            None,
        );
    }
    let table = format!(
        "socketmap:{}:{}",
        postfix_name(&sm.listen, pf.queue_directory()),
        sm.map
    );
    for (key, (via, domains)) in hops {
        let list = domains.join(", ");
        match postmap(pf, &table, &key) {
            PostmapAnswer::Failed(_) => {} // the live check reports it
            PostmapAnswer::Found(level) if !weak(&level) => out.ok.push(format!(
                "{via} sends mail for {list} to {key}; tls-policyd answers {level} for it"
            )),
            other => {
                let answer = match other {
                    PostmapAnswer::Found(v) => v,
                    _ => "NOTFOUND".into(),
                };
                out.problem(
                    format!(
                        "{via} sends mail for {list} to {key}: Postfix asks tls-policyd for {key}, not for the recipient domain, and gets {answer}; the rule forcing TLS for {list} does not govern that mail"
                    ),
                    Some(format!(
                        "add to the policy file: [[rule]] domains = [\"{key}\"] tls = \"forced\"; then systemctl reload tls-policyd"
                    )),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(name: &str) -> bool {
        matches!(name, "smtp" | "relay" | "lmtp" | "smtp-tls")
    }

    #[test]
    fn no_relayhost_no_transport_is_the_domain() {
        assert_eq!(route(None, "smtp", "", smtp), Route::Domain);
        assert_eq!(route(None, "", "", smtp), Route::Domain);
    }

    #[test]
    fn relayhost_is_the_key_verbatim_first_of_a_list() {
        let r = route(None, "smtp", "[relay.example]:587", smtp);
        assert_eq!(
            r,
            Route::NextHop {
                key: "[relay.example]:587".into(),
                via: "relayhost = [relay.example]:587".into()
            }
        );
        let Route::NextHop { key, .. } = route(None, "smtp", "[a.example], [b.example]", smtp)
        else {
            panic!()
        };
        assert_eq!(key, "[a.example]");
    }

    #[test]
    fn transport_entries() {
        // A next hop named: that hop, whatever relayhost says.
        let r = route(
            Some(("smtp:[mx.internal]", "bank.example in hash:t")),
            "smtp",
            "[r]",
            smtp,
        );
        assert!(
            matches!(r, Route::NextHop { ref key, .. } if key == "[mx.internal]"),
            "{r:?}"
        );
        // A transport and no next hop: the recipient domain, not relayhost.
        assert_eq!(
            route(Some(("smtp-tls:", "k")), "smtp", "[r]", smtp),
            Route::Domain
        );
        assert_eq!(
            route(Some(("smtp", "k")), "smtp", "[r]", smtp),
            Route::Domain
        );
        // `:` and `:hop`: the default transport, relayhost or that hop.
        assert!(
            matches!(route(Some((":", "k")), "smtp", "[r]", smtp), Route::NextHop { ref key, .. } if key == "[r]")
        );
        assert!(
            matches!(route(Some((":[h]:25", "k")), "smtp", "[r]", smtp), Route::NextHop { ref key, .. } if key == "[h]:25")
        );
        // Not an SMTP client.
        assert!(
            matches!(route(Some(("error:gone", "k")), "smtp", "", smtp), Route::NotSmtp { ref transport, .. } if transport == "error")
        );
        assert!(matches!(
            route(Some(("discard:", "k")), "smtp", "", smtp),
            Route::NotSmtp { .. }
        ));
    }

    #[test]
    fn default_transport_with_a_next_hop_overrules_relayhost() {
        let r = route(None, "smtp:[smarthost]:2525", "[relay]", smtp);
        assert!(
            matches!(r, Route::NextHop { ref key, .. } if key == "[smarthost]:2525"),
            "{r:?}"
        );
        assert!(matches!(
            route(None, "error", "", smtp),
            Route::NotSmtp { .. }
        ));
    }

    #[test]
    fn transport_lookup_keys() {
        assert_eq!(
            transport_keys("a.bank.example"),
            ["a.bank.example", ".bank.example", ".example", "*"]
        );
        assert_eq!(transport_keys("example"), ["example", "*"]);
    }
}
