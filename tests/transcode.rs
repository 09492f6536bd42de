//! Real images over real HTTP: transcoding, asynchronous jobs, and the
//! inputs that must be refused, each with its status and the gate's books
//! checked afterwards.

mod support;

use std::time::Duration;

use image::{DynamicImage, ImageFormat};
use reqwest::StatusCode;
use serde_json::Value;
use support::images;
use support::{TestServer, client, config, problem};

async fn post(server: &TestServer, path: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(server.url(path))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Waits until every reservation has ended and checks nothing is held.
async fn settled(server: &TestServer) {
    let state = server
        .gate_until(Duration::from_secs(10), |s| s.in_flight == 0)
        .await;
    assert_eq!(
        (state.reserved, state.in_flight, state.running, state.queued),
        (0, 0, 0, 0),
        "every reservation returned"
    );
}

#[tokio::test]
async fn a_jpeg_comes_back_as_a_smaller_webp_keeping_its_aspect_ratio() {
    let server = TestServer::start(config(|_| {})).await;
    let body = images::jpeg(1200, 800, 90);

    let answer = post(
        &server,
        "/v1/transcode?width=300&format=webp&quality=70",
        body,
    )
    .await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["content-type"], "image/webp");
    let out = answer.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::WebP, 300, 200));
    settled(&server).await;
}

#[tokio::test]
async fn the_output_keeps_the_input_format_by_default() {
    let server = TestServer::start(config(|_| {})).await;

    let png = post(
        &server,
        "/v1/transcode?height=50",
        images::png_rgba(200, 100),
    )
    .await;
    assert_eq!(png.headers()["content-type"], "image/png");
    let out = png.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::Png, 100, 50));

    let jpeg = post(
        &server,
        "/v1/transcode?width=64",
        images::jpeg(128, 128, 80),
    )
    .await;
    assert_eq!(jpeg.headers()["content-type"], "image/jpeg");
    let out = jpeg.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::Jpeg, 64, 64));
}

#[tokio::test]
async fn an_animated_gif_becomes_a_png_of_its_first_frame() {
    let server = TestServer::start(config(|_| {})).await;
    let answer = post(
        &server,
        "/v1/transcode?width=40",
        images::gif_animated(80, 60, 4),
    )
    .await;

    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["content-type"], "image/png");
    let out = answer.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::Png, 40, 30));
}

#[tokio::test]
async fn images_are_not_upscaled_unless_asked() {
    let server = TestServer::start(config(|_| {})).await;

    let kept = post(
        &server,
        "/v1/transcode?width=400",
        images::jpeg(100, 50, 80),
    )
    .await;
    let out = kept.bytes().await.unwrap();
    assert_eq!(images::decoded(&out).1, 100, "never upscaled by default");

    let grown = post(
        &server,
        "/v1/transcode?width=400&upscale=true",
        images::jpeg(100, 50, 80),
    )
    .await;
    let out = grown.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::Jpeg, 400, 200));
}

#[tokio::test]
async fn a_progressive_jpeg_is_transcoded_and_its_cost_learned_apart() {
    let server = TestServer::start(config(|_| {})).await;
    let answer = post(
        &server,
        "/v1/transcode?width=120",
        images::jpeg_progressive(480, 320, 85),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let out = answer.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::Jpeg, 120, 80));

    settled(&server).await;
    let costs = server.gate.costs();
    let class = costs.iter().find(|c| c.class == "jpeg_progressive");
    assert_eq!(class.map(|c| c.observed), Some(1), "{costs:?}");
}

#[tokio::test]
async fn exif_orientation_is_applied_before_the_box_is_fitted() {
    let server = TestServer::start(config(|_| {})).await;
    // Stored 200x100, displayed rotated a quarter turn: 100x200.
    let answer = post(
        &server,
        "/v1/transcode?width=50",
        images::jpeg_oriented(200, 100, 6),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let out = answer.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::Jpeg, 50, 100));
}

#[tokio::test]
async fn a_webp_input_comes_back_as_webp_and_a_16_bit_png_as_png() {
    let server = TestServer::start(config(|_| {})).await;
    let webp = images::encoded(
        DynamicImage::ImageRgba8(images::rgba(300, 200, 3)),
        ImageFormat::WebP,
    );
    let answer = post(&server, "/v1/transcode?width=150", webp).await;
    assert_eq!(answer.headers()["content-type"], "image/webp");
    let out = answer.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::WebP, 150, 100));

    let deep = DynamicImage::ImageRgba8(images::rgba(64, 64, 4)).to_rgba16();
    let png = images::encoded(DynamicImage::ImageRgba16(deep), ImageFormat::Png);
    let answer = post(&server, "/v1/transcode?width=32", png).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let out = answer.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::Png, 32, 32));
    settled(&server).await;
}

#[tokio::test]
async fn a_webp_output_larger_than_webp_allows_is_400_before_decoding() {
    let server = TestServer::start(config(|_| {})).await;
    let answer = post(
        &server,
        "/v1/transcode?width=16384&upscale=true&format=webp",
        images::jpeg(64, 32, 80),
    )
    .await;
    let body = problem(answer, 400).await;
    assert!(
        body["detail"].as_str().unwrap().contains("format"),
        "{body}"
    );
    settled(&server).await;
}

#[tokio::test]
async fn a_decompression_bomb_is_413_without_its_memory_reserved() {
    let server = TestServer::start(config(|_| {})).await;
    let bomb = images::png_bomb(30_000, 30_000);
    assert!(bomb.len() < 200, "a small file: {} bytes", bomb.len());

    let body = problem(post(&server, "/v1/transcode?width=100", bomb).await, 413).await;
    assert_eq!(body["reason"], "too_large", "{body}");
    let state = server.gate.state();
    assert_eq!(state.refused.too_large, 1);
    assert_eq!(state.admitted, 1, "only the body's reservation was granted");
    settled(&server).await;
}

#[tokio::test]
async fn bombs_in_every_format_are_413_without_their_memory_reserved() {
    let server = TestServer::start(config(|_| {})).await;
    let bombs = [
        (
            "jpeg",
            images::jpeg_bomb(&images::jpeg(64, 48, 80), 60_000, 60_000),
        ),
        (
            "progressive jpeg",
            images::jpeg_bomb(&images::jpeg_progressive(64, 48, 80), 60_000, 60_000),
        ),
        (
            "webp",
            images::webp_bomb(
                &images::webp_lossy(&images::rgb(64, 48, 1), 80),
                16_383,
                16_383,
            ),
        ),
        (
            "gif of 40 frames",
            images::gif_bomb(&images::gif_animated(16, 16, 40), 65_535, 65_535),
        ),
    ];

    for (name, bomb) in bombs {
        let info = memgate::jobs::probe(&bomb).expect("the header reads");
        assert!(info.width >= 16_383, "{name}: the header declares {info:?}");
        let answer = post(&server, "/v1/transcode?width=100", bomb).await;
        let body = problem(answer, 413).await;
        assert_eq!(body["reason"], "too_large", "{name}: {body}");
    }
    let state = server.gate.state();
    assert_eq!(state.refused.too_large, 4);
    assert_eq!(
        state.admitted, 4,
        "only the bodies' reservations were granted"
    );
    settled(&server).await;
}

#[tokio::test]
async fn an_image_is_read_for_what_it_is_not_for_what_its_content_type_says() {
    let server = TestServer::start(config(|_| {})).await;
    let answer = client()
        .post(server.url("/v1/transcode?width=50"))
        .header("content-type", "image/jpeg")
        .body(images::png_rgba(100, 80))
        .send()
        .await
        .unwrap();

    assert_eq!(answer.status(), StatusCode::OK);
    let bytes = answer.bytes().await.unwrap();
    assert_eq!(images::decoded(&bytes), (ImageFormat::Png, 50, 40));
    settled(&server).await;
}

#[tokio::test]
async fn extreme_aspect_ratios_keep_at_least_one_pixel_a_side() {
    let server = TestServer::start(config(|_| {})).await;
    for (w, h, expected) in [(4000, 1, (100, 1)), (1, 4000, (1, 100))] {
        let answer = post(
            &server,
            "/v1/transcode?width=100&height=100",
            images::png_rgba(w, h),
        )
        .await;
        assert_eq!(answer.status(), StatusCode::OK, "{w}x{h}");
        let bytes = answer.bytes().await.unwrap();
        assert_eq!(
            images::decoded(&bytes),
            (ImageFormat::Png, expected.0, expected.1)
        );
    }
    settled(&server).await;
}

#[tokio::test]
async fn an_output_larger_than_the_ceiling_is_413_before_decoding() {
    let server = TestServer::start(config(|_| {})).await;
    let path = "/v1/transcode?width=16384&height=16384&upscale=true&format=png";

    let body = problem(post(&server, path, images::png_rgba(2, 2)).await, 413).await;
    assert_eq!(body["reason"], "too_large", "{body}");
    settled(&server).await;
}

#[tokio::test]
async fn a_truncated_image_is_422() {
    let server = TestServer::start(config(|_| {})).await;
    let whole = images::png_rgba(300, 300);
    let cut = images::truncated(&whole, whole.len() / 2);

    let body = problem(post(&server, "/v1/transcode?width=100", cut).await, 422).await;
    assert_eq!(body["type"], "/problems/corrupt-image");
    settled(&server).await;
}

#[tokio::test]
async fn a_body_that_is_not_an_image_is_415_whatever_its_content_type() {
    let server = TestServer::start(config(|_| {})).await;
    let answer = client()
        .post(server.url("/v1/transcode"))
        .header("content-type", "image/png")
        .body("this is not a png, whatever the header says")
        .send()
        .await
        .unwrap();

    let body = problem(answer, 415).await;
    assert_eq!(body["type"], "/problems/unsupported-media");
    settled(&server).await;
}

#[tokio::test]
async fn transcode_parameters_out_of_range_are_400_naming_the_parameter() {
    let server = TestServer::start(config(|_| {})).await;
    for (query, name) in [
        ("width=0", "width"),
        ("height=99999", "height"),
        ("quality=101", "quality"),
        ("format=bmp", "format"),
        ("width=10&width=20", "width"),
        ("upscale=maybe", "upscale"),
        ("colour=red", "colour"),
    ] {
        let path = format!("/v1/transcode?{query}");
        let body = problem(post(&server, &path, images::jpeg(16, 16, 80)).await, 400).await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(name), "{query}: {detail}");
    }
    settled(&server).await;
}

#[tokio::test]
async fn an_asynchronous_job_is_accepted_then_done_with_its_result_kept() {
    let server = TestServer::start(config(|_| {})).await;
    let http = client();

    let accepted = post(
        &server,
        "/v1/jobs?width=50&format=png",
        images::jpeg(200, 100, 80),
    )
    .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = accepted.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/jobs/{}", body["id"].as_str().unwrap())
    );
    assert_eq!(body["status"], "queued");

    let status = wait_for_status(&server, &location, "done").await;
    let size = status["result_bytes"].as_u64().unwrap();
    assert!(size > 0);
    assert!(
        server.gate.state().reserved >= size,
        "the kept result counts against the gate"
    );

    let result = http
        .get(server.url(&format!("{location}/result")))
        .send()
        .await
        .unwrap();
    assert_eq!(result.headers()["content-type"], "image/png");
    let out = result.bytes().await.unwrap();
    assert_eq!(images::decoded(&out), (ImageFormat::Png, 50, 25));
}

#[tokio::test]
async fn an_asynchronous_job_that_fails_says_why() {
    let server = TestServer::start(config(|_| {})).await;
    // The header is whole, so the job is accepted; the pixels are not.
    let whole = images::encoded(
        DynamicImage::ImageRgb8(images::rgb(400, 400, 9)),
        ImageFormat::Png,
    );
    let cut = images::truncated(&whole, whole.len() / 3);

    let accepted = post(&server, "/v1/jobs?width=50", cut).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();

    let status = wait_for_status(&server, &location, "failed").await;
    assert_eq!(status["error_status"], 422, "{status}");
    assert!(status["reason"].as_str().unwrap().len() > 5, "{status}");

    let result = client()
        .get(server.url(&format!("{location}/result")))
        .send()
        .await
        .unwrap();
    problem(result, 409).await;
    settled(&server).await;
}

#[tokio::test]
async fn an_unknown_job_is_404() {
    let server = TestServer::start(config(|_| {})).await;
    let path = "/v1/jobs/6f0e3c1e-8f6a-4c55-9a43-0d2e1b0c9f11";
    let answer = client().get(server.url(path)).send().await.unwrap();
    problem(answer, 404).await;
}

#[tokio::test]
async fn draining_cancels_queued_asynchronous_jobs_with_the_reason() {
    let server = TestServer::start(config(|c| {
        c.gate.max_running = 1;
        c.gate.probe_jobs = 0;
    }))
    .await;
    // One slow job takes the only run slot; an image job queues behind it.
    let slow = {
        let http = client();
        let url = server.url("/v1/synthetic?mib=1&cpu_ms=1500");
        tokio::spawn(async move { http.post(url).send().await })
    };
    server
        .gate_until(Duration::from_secs(5), |s| s.running == 1)
        .await;
    let accepted = post(&server, "/v1/jobs?width=10", images::jpeg(64, 64, 80)).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();

    server.shut_down();
    let status = wait_for_status(&server, &location, "cancelled").await;
    assert_eq!(status["reason"], "draining");
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    server.stopped().await;
}

/// Polls `location` until its status is `wanted`, for at most 10 s.
async fn wait_for_status(server: &TestServer, location: &str, wanted: &str) -> Value {
    let http = client();
    let mut last = Value::Null;
    for _ in 0..500 {
        last = http
            .get(server.url(location))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if last["status"] == wanted {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job never became {wanted}: {last}");
}
