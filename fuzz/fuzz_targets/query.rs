//! Query strings of the job routes: any bytes a client puts after `?`
//! give parameters inside their documented ranges or a `ParamError`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use memgate::jobs::TranscodeParams;
use memgate::jobs::synthetic::SyntheticParams;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(params) = TranscodeParams::from_query(Some(query)) {
        let side = 1..=16384;
        assert!(params.width.is_none_or(|w| side.contains(&w)));
        assert!(params.height.is_none_or(|h| side.contains(&h)));
        assert!((1..=100).contains(&params.quality));
    }

    if let Ok(params) = SyntheticParams::from_query(Some(query)) {
        assert!(params.mib <= 1 << 20);
        assert!(params.cpu_ms <= 600_000);
        assert!(params.io_ms <= 600_000);
    }
});
