//! The whole transcoding path (probe, decode under `image::Limits`,
//! orient, resize, encode) on any bytes. Run with libFuzzer's
//! `-malloc_limit_mb`: an allocation past the decoder's budget is a crash,
//! which is how a decompression bomb that slips past the limits shows.

#![no_main]

use libfuzzer_sys::fuzz_target;
use memgate::jobs::{Cancel, TranscodeParams, transcode};

/// What the decoder may allocate: far less than the malloc limit the runs
/// use (see README.md), so that only an allocation outside the limits can
/// reach it.
const MAX_ALLOC: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let params =
        TranscodeParams::from_query(Some("width=256&height=256")).expect("fixed parameters parse");
    let _ = transcode(data, &params, MAX_ALLOC, &Cancel::new());
});
