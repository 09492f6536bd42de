//! The headers memgate reads itself. The input is read as header lines,
//! `name: value`; whatever hyper would accept as a header reaches the
//! parsers, which must answer a value or a typed error.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use memgate::server::headers::{cloud_trace, declared_length};

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }

    let _ = declared_length(&headers);

    let (trace, span) = cloud_trace(&headers);
    if let Some(trace) = &trace {
        assert!(!trace.is_empty() && trace.chars().all(|c| c.is_ascii_hexdigit()));
    }
    assert!(
        span.is_none() || trace.is_some(),
        "no span without its trace"
    );
});
