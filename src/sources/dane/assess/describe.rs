//! How an assessment reads in `explain`: a line for the MX state, one per
//! host.

use std::fmt;

use super::{AddressState, Assessment, MxHost, MxState, TlsaRecord, TlsaState};

impl fmt::Display for TlsaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.usage, self.selector, self.matching, self.data
        )
    }
}

impl MxHost {
    /// One line for `explain`.
    pub fn describe(&self) -> String {
        let head = match self.preference {
            Some(p) => format!("MX {p} {}", self.host),
            None => format!("implicit MX {}", self.host),
        };
        let addr = match &self.addresses {
            AddressState::Secure { count, via: None } => {
                format!("{count} address(es), DNSSEC-validated")
            }
            AddressState::Secure {
                count,
                via: Some(v),
            } => format!("CNAME to {v}, {count} address(es), DNSSEC-validated"),
            AddressState::Insecure { count } => {
                format!("{count} address(es), not DNSSEC-validated")
            }
            AddressState::None => "no addresses".to_string(),
            AddressState::Bogus { problem } => format!("addresses bogus: {problem}"),
            AddressState::Failed { problem } => format!("address lookup failed: {problem}"),
        };
        let tlsa = match &self.tlsa {
            TlsaState::NotLooked => "TLSA not looked up".to_string(),
            TlsaState::Secure {
                name,
                records,
                total,
                usable,
            } => {
                let mut s =
                    format!("TLSA at {name}, DNSSEC-validated: {usable} of {total} usable [");
                let shown: Vec<String> = records
                    .iter()
                    .map(|r| {
                        if r.usable {
                            r.to_string()
                        } else {
                            format!("{r} (unusable)")
                        }
                    })
                    .collect();
                s += &shown.join(", ");
                if *total > records.len() {
                    s += &format!(", and {} more", total - records.len());
                }
                s + "]"
            }
            TlsaState::Insecure { name } => format!("TLSA at {name}, not DNSSEC-validated"),
            TlsaState::Absent { names, secure } => format!(
                "no TLSA at {} ({})",
                names.join(" or "),
                if *secure {
                    "validated denial"
                } else {
                    "denial not validated"
                }
            ),
            TlsaState::Bogus { name, problem } => format!("TLSA at {name} bogus: {problem}"),
            TlsaState::Failed { name, problem } => {
                format!("TLSA lookup at {name} failed: {problem}")
            }
        };
        format!("{head}: {addr}; {tlsa}")
    }
}

impl Assessment {
    /// Lines for `explain`: the MX state, then one per host.
    pub fn describe(&self) -> Vec<String> {
        let mx = match &self.mx {
            MxState::Secure { .. } => "MX RRset DNSSEC-validated".to_string(),
            MxState::Implicit { .. } => {
                "no MX records (validated denial): the domain is its own mail host".to_string()
            }
            MxState::NullMx => "null MX (RFC 7505): the domain accepts no mail".to_string(),
            MxState::Insecure => "MX answer not DNSSEC-validated".to_string(),
            MxState::NxDomain { secure } => format!(
                "the domain does not exist ({})",
                if *secure {
                    "validated denial"
                } else {
                    "denial not validated"
                }
            ),
            MxState::BadName { problem } => {
                format!("not a domain that can be looked up: {problem}")
            }
            MxState::Bogus { problem } => format!("MX lookup bogus: {problem}"),
            MxState::Failed { problem } => format!("MX lookup failed: {problem}"),
        };
        let mut out = vec![format!("{}: {mx}", self.domain)];
        out.extend(self.hosts.iter().map(MxHost::describe));
        if self.skipped > 0 {
            out.push(format!(
                "{} more MX host(s) not looked at (dane.max_mx)",
                self.skipped
            ));
        }
        out
    }
}
