//! The transcoding pipeline on generated images: time per job, and the
//! memory each job really peaks at against its estimate.
//!
//! `cargo bench --bench transcode` first prints one line per image with
//! its decoded size, the job's estimate, the measured peak (jemalloc's
//! per-thread high-water mark plus the encoded input, as the server
//! counts it) and one run's time, then times the main cases with
//! criterion.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use image::{DynamicImage, ImageFormat};
use memgate::jobs::{self, Cancel, TranscodeParams};

#[path = "../tests/support/images.rs"]
mod images;

#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MIB: f64 = (1 << 20) as f64;

/// One image and the request made of it.
struct Case {
    name: &'static str,
    image: Vec<u8>,
    query: &'static str,
}

fn cases() -> Vec<Case> {
    let rgba = |w, h| DynamicImage::ImageRgba8(images::rgba(w, h, 7));
    let rgb = |w, h| DynamicImage::ImageRgb8(images::rgb(w, h, 8));
    vec![
        Case {
            name: "jpeg_24mp_to_1024",
            image: images::jpeg(6000, 4000, 90),
            query: "width=1024&height=1024",
        },
        Case {
            name: "jpeg_photo_24mp_to_1024",
            image: images::encoded_jpeg(DynamicImage::ImageRgb8(images::photo(6000, 4000)), 90),
            query: "width=1024&height=1024",
        },
        Case {
            name: "jpeg_progressive_24mp_to_1024",
            image: images::jpeg_progressive(6000, 4000, 90),
            query: "width=1024&height=1024",
        },
        Case {
            name: "jpeg_progressive_420_24mp_to_1024",
            image: images::jpeg_progressive(6000, 4000, 85),
            query: "width=1024&height=1024",
        },
        Case {
            name: "jpeg_24mp_to_1024_webp",
            image: images::jpeg(6000, 4000, 90),
            query: "width=1024&height=1024&format=webp",
        },
        Case {
            name: "jpeg_2mp_to_512",
            image: images::jpeg(1600, 1200, 85),
            query: "width=512",
        },
        Case {
            name: "jpeg_2mp_same_size",
            image: images::jpeg(1600, 1200, 85),
            query: "",
        },
        Case {
            name: "png_rgba_12mp_to_1024",
            image: images::encoded(rgba(4000, 3000), ImageFormat::Png),
            query: "width=1024",
        },
        Case {
            name: "png_rgb_2mp_to_1600_webp",
            image: images::encoded(rgb(1600, 1200), ImageFormat::Png),
            query: "format=webp",
        },
        Case {
            name: "webp_lossless_4mp_to_800",
            image: images::encoded(rgba(2400, 1600), ImageFormat::WebP),
            query: "width=800&format=jpeg",
        },
        Case {
            name: "webp_lossy_4mp_to_800",
            image: images::webp_lossy(&images::rgb(2400, 1600, 9), 80),
            query: "width=800",
        },
        Case {
            name: "gif_1mp_to_400",
            image: images::gif_animated(1200, 800, 3),
            query: "width=400",
        },
    ]
}

/// Prints, for every case, the estimate against the measured peak.
fn report_estimates(cases: &[Case]) {
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "case", "input", "decoded", "estimate", "peak", "est/peak", "ms"
    );
    for case in cases {
        let params = TranscodeParams::from_query(Some(case.query)).expect("params");
        let info = jobs::probe(&case.image).expect("probe");
        let estimate = jobs::estimate(&info, &params).expect("estimate");
        let decoded = u64::from(info.width)
            * u64::from(info.height)
            * u64::from(info.color.bytes_per_pixel());

        let started = Instant::now();
        let (output, peak) =
            jobs::measure_peak(|| jobs::transcode(&case.image, &params, estimate, &Cancel::new()));
        let elapsed = started.elapsed();
        output.expect("transcode");
        let peak = peak.map_or(f64::NAN, |p| (p + case.image.len() as u64) as f64);

        println!(
            "{:<32} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>8.1}",
            case.name,
            case.image.len() as f64 / MIB,
            decoded as f64 / MIB,
            estimate as f64 / MIB,
            peak / MIB,
            estimate as f64 / peak,
            elapsed.as_secs_f64() * 1000.0,
        );
    }
}

fn transcode(c: &mut Criterion) {
    let cases = cases();
    report_estimates(&cases);

    let mut group = c.benchmark_group("transcode");
    group.sample_size(10);
    for case in &cases {
        let params = TranscodeParams::from_query(Some(case.query)).expect("params");
        group.bench_function(case.name, |b| {
            b.iter(|| {
                jobs::transcode(black_box(&case.image), &params, u64::MAX, &Cancel::new())
                    .expect("transcode")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, transcode);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
