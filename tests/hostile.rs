//! Hostile inputs against the binary in a fresh 2 GiB cgroup, with what
//! each one costs in memory: the cgroup's peak usage while it is answered,
//! above the usage before it. A bomb refused from its header must cost
//! about its body; one admitted must stay within what it reserved; and the
//! server must still serve a real image afterwards.
//!
//! `cargo test --test hostile -- --nocapture` prints the figures.

#[allow(dead_code)]
#[path = "../benches/burst/cgroup.rs"]
mod cgroup;
#[path = "support/images.rs"]
mod images;
#[path = "support/instance.rs"]
mod instance;
#[path = "support/logged.rs"]
mod logged;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cgroup::Cgroup;
use instance::{PeakWatch, exit_within, limited_cgroup, serving};

const MIB: u64 = 1 << 20;

/// One hostile request and what it may cost.
struct Case {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    /// The most the cgroup may rise above its usage before the request.
    most: u64,
}

fn cases() -> Vec<Case> {
    let photo = images::jpeg(4000, 3000, 85);
    let half = photo.len() / 2;
    let noise = images::encoded(
        image::DynamicImage::ImageRgb8(images::rgb(4000, 3000, 7)),
        image::ImageFormat::Png,
    );
    let case = |name, path, body: Vec<u8>, status, most_mib: u64| Case {
        name,
        path,
        content_type: "application/octet-stream",
        most: most_mib * MIB + body.len() as u64,
        body,
        status,
    };
    vec![
        // The yardstick: 12 MP decode to 34 MiB of RGB.
        case(
            "12 MP JPEG",
            "/v1/transcode?width=1024",
            photo.clone(),
            200,
            96,
        ),
        case(
            "PNG declaring 30000 x 30000",
            "/v1/transcode?width=100",
            images::png_bomb(30_000, 30_000),
            413,
            16,
        ),
        case(
            "JPEG declaring 60000 x 60000",
            "/v1/transcode?width=100",
            images::jpeg_bomb(&images::jpeg(64, 48, 80), 60_000, 60_000),
            413,
            16,
        ),
        case(
            "progressive JPEG declaring 60000 x 60000",
            "/v1/transcode?width=100",
            images::jpeg_bomb(&images::jpeg_progressive(64, 48, 80), 60_000, 60_000),
            413,
            16,
        ),
        // The largest WebP there is fits a 2 GiB instance: admitted, and
        // its 64 x 48 of pixel data fail to fill it.
        case(
            "WebP declaring 16383 x 16383",
            "/v1/transcode?width=100",
            images::webp_bomb(
                &images::webp_lossy(&images::rgb(64, 48, 1), 80),
                16_383,
                16_383,
            ),
            422,
            16,
        ),
        case(
            "GIF of 40 frames declaring 65535 x 65535",
            "/v1/transcode?width=100",
            images::gif_bomb(&images::gif_animated(16, 16, 40), 65_535, 65_535),
            413,
            16,
        ),
        // Admitted: 4000 x 4000 RGBA inflates to 61 MiB for real.
        case(
            "zlib bomb PNG of 4000 x 4000 zeros",
            "/v1/transcode?width=100",
            images::png_zlib_bomb(4000, 4000),
            200,
            160,
        ),
        // JPEG is decoded leniently, as `image` and libvips do by default:
        // the missing half comes out grey. A PNG must be whole.
        case(
            "12 MP JPEG cut in half",
            "/v1/transcode?width=1024",
            images::truncated(&photo, half),
            200,
            96,
        ),
        case(
            "12 MP PNG cut in half",
            "/v1/transcode?width=1024",
            images::truncated(&noise, noise.len() / 2),
            422,
            96,
        ),
        case(
            "4000 x 1 PNG",
            "/v1/transcode?width=100&height=100",
            images::png_rgba(4000, 1),
            200,
            16,
        ),
        case(
            "output larger than the ceiling",
            "/v1/transcode?width=16384&height=16384&upscale=true&format=png",
            images::png_rgba(2, 2),
            413,
            16,
        ),
        Case {
            name: "PNG sent as image/jpeg",
            path: "/v1/transcode?width=100",
            content_type: "image/jpeg",
            body: images::png_rgba(400, 300),
            status: 200,
            most: 16 * MIB,
        },
        case(
            "random bytes",
            "/v1/transcode?width=100",
            (0..64 * 1024u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
            415,
            16,
        ),
        // And the server still serves.
        case(
            "12 MP JPEG again",
            "/v1/transcode?width=1024",
            photo,
            200,
            96,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hostile_input_is_answered_within_its_memory() {
    let Some(cgroup) = limited_cgroup("hostile") else {
        return;
    };
    let (mut server, base) = serving(&cgroup);
    let http = reqwest::Client::new();
    let cgroup = Arc::new(cgroup);

    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for case in cases() {
        let before = settled(&cgroup).await;
        let (status, peak) = send(&http, &base, &case, &cgroup).await;
        let cost = peak.saturating_sub(before);
        rows.push(format!(
            "| {} | {} KiB | {status} | {:.1} | {} |",
            case.name,
            case.body.len() / 1024,
            cost as f64 / MIB as f64,
            case.most / MIB
        ));
        if status != case.status || cost > case.most {
            wrong.push(format!(
                "{}: {status} (expected {}), {} MiB above the usage before \
                 (at most {})",
                case.name,
                case.status,
                cost / MIB,
                case.most / MIB
            ));
        }
    }
    eprintln!("| input | body | status | peak above before, MiB | bound, MiB |");
    eprintln!("|---|---|---|---|---|");
    for row in rows {
        eprintln!("{row}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    assert_eq!(cgroup.oom_kills(), Ok(0), "no OOM kill");
    server.terminate();
    assert_eq!(exit_within(&mut server, Duration::from_secs(10)), Some(0));
}

/// Sends `case` while sampling the cgroup every 5 ms; its status and the
/// highest usage seen.
async fn send(http: &reqwest::Client, base: &str, case: &Case, cgroup: &Arc<Cgroup>) -> (u16, u64) {
    let watch = PeakWatch::start(Arc::clone(cgroup), Duration::from_millis(5));
    let answer = http
        .post(format!("{base}{}", case.path))
        .header("content-type", case.content_type)
        .body(case.body.clone())
        .send()
        .await
        .expect("an answer");
    let status = answer.status().as_u16();
    answer.bytes().await.expect("the whole answer");
    // What the job freed is returned after the answer; the peak is before.
    tokio::time::sleep(Duration::from_millis(50)).await;
    (status, watch.stop().await)
}

/// The cgroup's usage once it has stopped falling: freed pages go back
/// over about a second.
async fn settled(cgroup: &Cgroup) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = cgroup.usage().expect("cgroup usage");
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = cgroup.usage().expect("cgroup usage");
        if now + MIB >= last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}
