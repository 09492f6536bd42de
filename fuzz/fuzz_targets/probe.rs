//! Format sniffing and the memory estimate from an image's header alone,
//! the step that runs before any memory is reserved: any bytes give an
//! image's size or a typed error, and an estimate that covers at least
//! the decoded pixels.

#![no_main]

use libfuzzer_sys::fuzz_target;
use memgate::jobs::{TranscodeParams, estimate, probe};

fuzz_target!(|data: &[u8]| {
    let Ok(info) = probe(data) else {
        return;
    };
    let params = TranscodeParams::from_query(Some("width=1024&height=1024"))
        .expect("fixed parameters parse");
    if let Ok(bytes) = estimate(&info, &params) {
        assert!(bytes >= info.decoded_bytes(), "estimate below the pixels");
    }
});
