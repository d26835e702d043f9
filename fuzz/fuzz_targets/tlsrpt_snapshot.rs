#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tls_policyd::fuzzing::check_tlsrpt_snapshot(data));
