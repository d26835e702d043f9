//! TLS-RPT test data: a day's sessions in a cache file, as the counter
//! keeps them, and a report's gzip body read back.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tls_policyd::tlsrpt::directory::Found;
use tls_policyd::tlsrpt::record;
use tls_policyd::tlsrpt::report::{AppliedPolicy, FailureKey, PolicyType, ResultType};
use tls_policyd::tlsrpt::session::{Session, SessionResult};
use tls_policyd::tlsrpt::store::TlsRptStore;

/// The day `yesterday`'s sessions to `r.example` in the cache file at
/// `path` (`ok` successful, one without STARTTLS per address in
/// `failed`), and the domain's record with its reports going to
/// `https://COLLECTOR/v1`.
pub fn fill_sessions(
    path: &Path,
    yesterday: SystemTime,
    ok: usize,
    failed: &[&str],
    collector: &str,
) {
    let s = TlsRptStore::open(path).unwrap();
    let policy = AppliedPolicy {
        policy_type: PolicyType::NoPolicyFound,
        policy_string: vec![],
        policy_domain: "r.example".into(),
        mx_host: vec![],
    };
    let noon = yesterday + Duration::from_secs(12 * 3600);
    let mut results: Vec<SessionResult> = failed
        .iter()
        .map(|ip| {
            SessionResult::Failed(FailureKey {
                result_type: ResultType::StarttlsNotSupported,
                sending_mta_ip: None,
                receiving_mx_hostname: Some("mx.r.example".into()),
                receiving_ip: Some(ip.parse().unwrap()),
                failure_reason_code: None,
            })
        })
        .collect();
    results.extend((0..ok).map(|_| SessionResult::Successful));
    for (i, result) in results.into_iter().enumerate() {
        let session = Session {
            domain: "r.example".into(),
            policy: policy.clone(),
            result,
        };
        assert!(s.add(&session, &format!("Q{i} a@r.example"), noon).unwrap());
    }
    let rec = record::parse(&format!("v=TLSRPTv1; rua=https://{collector}/v1")).unwrap();
    s.keep_record(
        "r.example",
        &Found {
            record: Ok(rec),
            ttl: Duration::from_secs(86_400),
        },
        SystemTime::now(),
    )
    .unwrap();
}

/// A gzip-compressed JSON report, decoded.
pub fn gunzip(bytes: &[u8]) -> serde_json::Value {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap()
}
