//! Transcoding estimates against what the work really holds, measured
//! with jemalloc's per-thread peak: an estimate below the peak lets the
//! gate admit more than fits; one far above it wastes the ceiling.
//!
//! Allocations are deterministic for a given image and request, so these
//! bounds are checked exactly, not with a tolerance for noise.

#![cfg(target_os = "linux")]

mod support;

use image::{DynamicImage, ImageFormat};
use memgate::jobs::{self, Cancel, TranscodeParams};
use support::images;

const MIB: u64 = 1 << 20;

/// Slack over the measured peak that an estimate may have besides its
/// ratio: the fixed allowance for tables and encoder state, which
/// dominates small images.
const FIXED_SLACK: u64 = 2 * MIB;

struct Case {
    name: &'static str,
    image: Vec<u8>,
    query: &'static str,
}

fn cases() -> Vec<Case> {
    let rgba = |w, h| DynamicImage::ImageRgba8(images::rgba(w, h, 7));
    let rgb16 =
        DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(images::rgb(640, 480, 2)).to_rgb16());
    vec![
        Case {
            name: "jpeg to a smaller jpeg",
            image: images::jpeg(1600, 1200, 90),
            query: "width=400",
        },
        Case {
            name: "progressive jpeg to a smaller jpeg",
            image: images::jpeg_progressive(1600, 1200, 90),
            query: "width=400",
        },
        Case {
            name: "progressive 4:2:0 jpeg to png",
            image: images::jpeg_progressive(1600, 1200, 85),
            query: "width=400&format=png",
        },
        Case {
            name: "jpeg to webp of the same size",
            image: images::jpeg(1200, 800, 90),
            query: "format=webp",
        },
        Case {
            name: "rgba png to a smaller png",
            image: images::encoded(rgba(1200, 900), ImageFormat::Png),
            query: "width=300",
        },
        Case {
            name: "rgba png to png of the same size",
            image: images::encoded(rgba(1000, 700), ImageFormat::Png),
            query: "",
        },
        Case {
            name: "16-bit png to jpeg",
            image: images::encoded(rgb16, ImageFormat::Png),
            query: "width=320&format=jpeg",
        },
        Case {
            name: "lossless webp to jpeg",
            image: images::encoded(rgba(1200, 800), ImageFormat::WebP),
            query: "width=400&format=jpeg",
        },
        Case {
            name: "lossy webp to webp",
            image: images::webp_lossy(&images::rgb(1200, 800, 9), 80),
            query: "width=600",
        },
        Case {
            name: "animated gif to png",
            image: images::gif_animated(600, 400, 3),
            query: "width=200",
        },
    ]
}

#[test]
fn estimates_cover_the_measured_peak_without_wasting_more_than_half() {
    let mut report = Vec::new();
    let mut wrong = 0;
    for case in cases() {
        let params = TranscodeParams::from_query(Some(case.query)).unwrap();
        let info = jobs::probe(&case.image).unwrap();
        let estimate = jobs::estimate(&info, &params).unwrap();

        let (output, peak) =
            jobs::measure_peak(|| jobs::transcode(&case.image, &params, estimate, &Cancel::new()));
        output.unwrap();
        // As the server counts it: the body was allocated elsewhere.
        let peak = peak.expect("jemalloc serves this process") + case.image.len() as u64;

        let fits = peak <= estimate && estimate <= peak * 3 / 2 + FIXED_SLACK;
        if !fits {
            wrong += 1;
        }
        report.push(format!(
            "{:<36} estimate {:>6.2} MiB, peak {:>6.2} MiB{}",
            case.name,
            estimate as f64 / MIB as f64,
            peak as f64 / MIB as f64,
            if fits { "" } else { "  <- out of bounds" }
        ));
    }
    assert_eq!(wrong, 0, "\n{}", report.join("\n"));
}

#[test]
fn decoding_stops_at_the_memory_it_was_given() {
    let image = images::encoded(
        DynamicImage::ImageRgba8(images::rgba(1000, 1000, 1)),
        ImageFormat::Png,
    );
    let params = TranscodeParams::from_query(Some("width=100")).unwrap();
    let err = jobs::transcode(&image, &params, 2 * MIB, &Cancel::new()).unwrap_err();
    assert!(matches!(err, jobs::JobError::TooLarge(_)), "{err}");
}

#[test]
fn a_cancelled_transcode_stops_before_encoding() {
    let cancel = Cancel::new();
    cancel.cancel();
    let params = TranscodeParams::from_query(Some("width=100")).unwrap();
    let err = jobs::transcode(&images::jpeg(400, 300, 80), &params, u64::MAX, &cancel).unwrap_err();
    assert!(matches!(err, jobs::JobError::Cancelled), "{err}");
}
