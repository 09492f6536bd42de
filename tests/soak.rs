//! The short soak: the binary in a 2 GiB cgroup under mixed load at more
//! than 1.5 times what it can serve, for 20 s. No OOM kill, the cgroup
//! never past the ceiling, every request answered (done, or refused with
//! `Retry-After`), and once the load stops every reservation returned and
//! the memory given back. The 30-minute soak is the burst benchmark's
//! `soak` workload (see the README).
//!
//! Why more than 1.5 times: a synthetic job holds 150 MiB for at least
//! its 1 s of `io_ms`, and 2 GiB plans at most twelve of them at once, so
//! the instance serves at most 12 of them a second, and fewer with images
//! beside them. Sixteen are offered each second, and images on top.

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

use instance::{PeakWatch, admission, exit_within, limited_cgroup, serving};

/// How long the load lasts.
const LOAD: Duration = Duration::from_secs(20);

/// Synthetic jobs sent per second: past the at most 12 a second served.
const SYNTHETIC_PER_SECOND: u32 = 16;

/// One image sent for every this many synthetic jobs.
const SYNTHETIC_PER_IMAGE: u32 = 2;

/// The ceiling memgate derives from 2 GiB with its default ratio, 0.92.
const CEILING: u64 = 1_975_684_956;

/// What the cgroup may still hold once the load has stopped and freed
/// pages have decayed: the server's own baseline, well under one job.
const SETTLED: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_for_20_s_in_2_gib_stays_under_the_ceiling_and_returns_everything() {
    let Some(cgroup) = limited_cgroup("soak") else {
        return;
    };
    let (mut server, base) = serving(&cgroup);
    let http = reqwest::Client::new();

    let cgroup = Arc::new(cgroup);
    let watch = PeakWatch::start(Arc::clone(&cgroup), Duration::from_millis(20));
    let answers = overload(&http, &base).await;
    let sampled = watch.stop().await;

    let (done, refused) = tally(answers);
    eprintln!("soak: {done} done, {refused} refused");
    assert!(done > 0, "jobs were served");
    assert!(refused > 0, "the load was more than the instance serves");
    let peak = cgroup.kernel_peak().unwrap_or(0).max(sampled);
    eprintln!("soak: peak {} MiB", peak >> 20);
    assert!(peak <= CEILING, "peak {peak} past the ceiling {CEILING}");
    assert_eq!(cgroup.oom_kills(), Ok(0), "no OOM kill");

    all_returned(&http, &base).await;
    memory_given_back(&cgroup).await;

    server.terminate();
    assert_eq!(exit_within(&mut server, Duration::from_secs(10)), Some(0));
    assert_eq!(server.stderr(), "", "nothing on stderr");
}

type Answer = reqwest::Result<(u16, bool)>;

/// Sends the load open-loop, whatever the answers, and waits for every
/// answer: its status, and whether it carried `Retry-After`.
async fn overload(http: &reqwest::Client, base: &str) -> Vec<Answer> {
    let image = bytes::Bytes::from(images::jpeg(1600, 1200, 85));
    let synthetic = format!("{base}/v1/synthetic?mib=150&cpu_ms=20&io_ms=1000");
    let transcode = format!("{base}/v1/transcode?width=512");
    let every = Duration::from_secs(1) / SYNTHETIC_PER_SECOND;
    let started = Instant::now();

    let mut requests = Vec::new();
    let mut sent = 0u32;
    while started.elapsed() < LOAD {
        requests.push(tokio::spawn(answer(http.post(&synthetic))));
        if sent.is_multiple_of(SYNTHETIC_PER_IMAGE) {
            let upload = http.post(&transcode).header("content-type", "image/jpeg");
            requests.push(tokio::spawn(answer(upload.body(image.clone()))));
        }
        sent += 1;
        tokio::time::sleep_until((started + every * sent).into()).await;
    }

    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        answers.push(request.await.expect("request task"));
    }
    answers
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    response.bytes().await?;
    Ok((status, retry_after))
}

/// Jobs done and refusals; anything else fails the test.
fn tally(answers: Vec<Answer>) -> (usize, usize) {
    let (mut done, mut refused) = (0, 0);
    for answer in answers {
        match answer.expect("every request answered, no broken connection") {
            (200, _) => done += 1,
            (503, true) => refused += 1,
            (status, retry_after) => {
                panic!("status {status} (Retry-After: {retry_after}): not done, not refused")
            }
        }
    }
    (done, refused)
}

/// Nothing reserved, running, queued or in flight once the last answer is
/// in, allowing a moment for the last jobs' threads to hand back.
async fn all_returned(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gate = admission(http, base).await["gate"].clone();
        let field = |name: &str| gate[name].as_u64();
        let idle = ["reserved", "in_flight", "running", "queued"]
            .iter()
            .all(|name| field(name) == Some(0));
        if idle {
            return;
        }
        assert!(Instant::now() < deadline, "not all returned: {gate}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cgroup's usage falls back near the server's baseline: freed pages
/// go back to the kernel, not kept by the allocator.
async fn memory_given_back(cgroup: &cgroup::Cgroup) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let usage = cgroup.usage().expect("cgroup usage");
        if usage <= SETTLED {
            eprintln!("soak: settled at {} MiB", usage >> 20);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {} MiB used 10 s after the load",
            usage >> 20
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
