//! The service over real HTTP on loopback: routes, statuses, admission,
//! faults and draining.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use support::{MIB, TestServer, client, config, problem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn health_and_readiness_answer_while_serving() {
    let server = TestServer::start(config(|_| {})).await;
    let http = client();

    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems() {
    let server = TestServer::start(config(|_| {})).await;
    let http = client();

    problem(http.get(server.url("/nope")).send().await.unwrap(), 404).await;
    problem(
        http.get(server.url("/v1/transcode")).send().await.unwrap(),
        405,
    )
    .await;
    problem(
        http.get(server.url("/v1/jobs/not-an-id"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn admission_state_is_served_as_json() {
    let server = TestServer::start(config(|_| {})).await;
    let state: Value = client()
        .get(server.url("/v1/admission"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(state["ceiling"]["bytes"], 1u64 << 30);
    assert_eq!(state["working_set"], 50 * MIB);
    for key in [
        "capacity",
        "reserved",
        "in_flight",
        "queued",
        "running_limit",
    ] {
        assert!(state["gate"][key].is_u64(), "missing gate.{key}: {state}");
    }
    assert!(state["binding"].is_string());
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_format() {
    let server = TestServer::start(config(|_| {})).await;
    let response = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(text.contains("memgate_capacity_bytes"), "{text}");
}

#[tokio::test]
async fn a_body_larger_than_allowed_is_refused_before_it_is_read() {
    let server = TestServer::start(config(|c| {
        c.server.max_body = bytesize::ByteSize::mib(1);
        c.server.max_chunked_body = bytesize::ByteSize::mib(1);
    }))
    .await;

    // Declare 2 MiB and send nothing: the answer must not wait for the body.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v1/transcode HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(server.gate.state().reserved, 0, "nothing reserved");
}

#[tokio::test]
async fn a_chunked_body_needs_a_length_when_chunked_bodies_are_off() {
    let server = TestServer::start(config(|c| {
        c.server.max_chunked_body = bytesize::ByteSize::b(0)
    }))
    .await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v1/transcode HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");
}

#[tokio::test]
async fn a_chunked_body_past_its_reservation_is_refused_with_413() {
    let server = TestServer::start(config(|c| {
        c.server.max_chunked_body = bytesize::ByteSize::kib(64)
    }))
    .await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v1/transcode HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 32 * 1024];
    for _ in 0..3 {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(&chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let state = server
        .gate_until(Duration::from_secs(2), |s| s.reserved == 0)
        .await;
    assert_eq!(state.reserved, 0, "the upload's reservation returned");
}

#[tokio::test]
async fn a_chunked_upload_that_never_ends_is_408_and_returns_its_reservation() {
    let server = TestServer::start(config(|c| c.server.body_timeout_ms = 500)).await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v1/transcode HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    // One chunk, then nothing: neither the next chunk nor the last.
    stream.write_all(b"4\r\nabcd\r\n").await.unwrap();

    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let state = server
        .gate_until(Duration::from_secs(2), |s| s.reserved == 0)
        .await;
    assert_eq!(state.reserved, 0, "the upload's reservation returned");
}

#[tokio::test]
async fn a_body_longer_than_its_content_length_is_cut_there_and_the_rest_refused() {
    let server = TestServer::start(config(|_| {})).await;

    // Content-Length says 10; the client sends 10 bytes, then bytes that
    // are not a request. The first request is read as 10 bytes (not an
    // image: 415), the rest as a malformed second request (400, and the
    // connection closed): nothing past the declared length reaches a job.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = "POST /v1/transcode HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n\
                   0123456789and then a great deal more than was declared\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();

    let first = read_head(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 415"), "{first}");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is closed after the garbage");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("HTTP/1.1 400"),
        "the rest is answered as the bad request it is: {rest}"
    );
    let state = server
        .gate_until(Duration::from_secs(2), |s| s.reserved == 0)
        .await;
    assert_eq!(state.reserved, 0, "nothing held");
}

#[tokio::test]
async fn headers_sent_too_slowly_close_the_connection() {
    let server = TestServer::start(config(|c| c.server.header_read_timeout_ms = 300)).await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the server must give up on its own.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the server kept a slow client's connection open"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let server = TestServer::start(config(|_| {})).await;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn readiness_turns_503_while_draining() {
    let server = TestServer::start(config(|_| {})).await;
    server.shut_down();
    let state = server
        .gate_until(Duration::from_secs(2), |s| s.draining)
        .await;
    assert!(state.draining);
    server.stopped().await;
}

/// Reads a response's status line and headers.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer within 5 s");
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn the_synthetic_job_reserves_touches_and_answers() {
    let server = TestServer::start(config(|_| {})).await;
    let response = client()
        .post(server.url("/v1/synthetic?mib=8&cpu_ms=20"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["mib"], 8);

    let state = server
        .gate_until(Duration::from_secs(2), |s| s.in_flight == 0)
        .await;
    assert_eq!((state.reserved, state.in_flight, state.running), (0, 0, 0));
    assert_eq!(state.admitted, 1);
}

#[tokio::test]
async fn jobs_run_at_the_configured_nice_value() {
    // 7 is not the default, so that another test's server in this process
    // cannot account for it.
    let server = TestServer::start(config(|c| c.server.job_nice = 7)).await;
    let response = client()
        .post(server.url("/v1/synthetic?mib=1&cpu_ms=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The blocking thread that ran the job idles on, with its nice value.
    let nice_values: Vec<i64> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            let fields = stat.rsplit_once(')')?.1;
            fields.split_whitespace().nth(16)?.parse().ok()
        })
        .collect();
    assert!(nice_values.contains(&7), "{nice_values:?}");
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let server = TestServer::start(config(|_| {})).await;
    let http = client();

    for query in [
        "mib=lots",
        "mib=1&mib=2",
        "mib=1&colour=red",
        "mib=99999999",
    ] {
        let url = server.url(&format!("/v1/synthetic?{query}"));
        let body = problem(http.post(url).send().await.unwrap(), 400).await;
        assert!(body["detail"].as_str().unwrap().len() > 5, "{body}");
    }
    let body = problem(
        http.post(server.url("/v1/transcode?width=0"))
            .body(vec![0u8; 10])
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("width"), "{body}");
}

#[tokio::test]
async fn a_job_larger_than_the_ceiling_is_413_at_once() {
    let server = TestServer::start(config(|_| {})).await;
    let body = problem(
        client()
            .post(server.url("/v1/synthetic?mib=2048"))
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    assert_eq!(body["reason"], "too_large");
    assert_eq!(server.gate.state().reserved, 0);
}

#[tokio::test]
async fn a_panicking_job_is_500_and_the_server_carries_on() {
    let server = TestServer::start(config(|_| {})).await;
    let http = client();

    problem(
        http.post(server.url("/v1/synthetic?mib=4&panic=true"))
            .send()
            .await
            .unwrap(),
        500,
    )
    .await;
    let state = server
        .gate_until(Duration::from_secs(2), |s| s.in_flight == 0)
        .await;
    assert_eq!(
        (state.reserved, state.running),
        (0, 0),
        "reservation returned"
    );

    let after = http
        .post(server.url("/v1/synthetic?mib=4"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
}

#[tokio::test]
async fn a_full_queue_is_503_with_retry_after() {
    let server = TestServer::start(config(|c| {
        c.gate.max_queue = 1;
        c.gate.max_running = 1;
        c.gate.min_running = 1;
        c.gate.probe_jobs = 0;
    }))
    .await;
    let http = client();

    // One job runs, one waits for its run slot: the next is refused.
    let mut held = Vec::new();
    for _ in 0..2 {
        let http = http.clone();
        let url = server.url("/v1/synthetic?mib=1&cpu_ms=1500");
        held.push(tokio::spawn(async move { http.post(url).send().await }));
    }
    server
        .gate_until(Duration::from_secs(5), |s| s.running == 1 && s.queued == 1)
        .await;

    let refused = http
        .post(server.url("/v1/synthetic?mib=1"))
        .send()
        .await
        .unwrap();
    let retry_after = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(retry_after.parse::<u64>().unwrap() >= 1);
    let body = problem(refused, 503).await;
    assert_eq!(body["reason"], "queue_full");

    for job in held {
        assert_eq!(job.await.unwrap().unwrap().status(), 200);
    }
}

#[tokio::test]
async fn refusals_can_answer_429_instead() {
    let server = TestServer::start(config(|c| {
        c.server.refusal_status = 429;
        c.gate.max_queue = 0;
        c.gate.max_running = 1;
        c.gate.probe_jobs = 0;
    }))
    .await;
    let http = client();
    let running = {
        let http = http.clone();
        let url = server.url("/v1/synthetic?mib=1&cpu_ms=1000");
        tokio::spawn(async move { http.post(url).send().await })
    };
    server
        .gate_until(Duration::from_secs(5), |s| s.running == 1)
        .await;

    let refused = http
        .post(server.url("/v1/synthetic?mib=1"))
        .send()
        .await
        .unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    problem(refused, 429).await;
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_that_leaves_mid_job_gets_its_reservation_returned_when_the_work_stops() {
    let server = TestServer::start(config(|_| {})).await;
    let request = {
        let http = client();
        let url = server.url("/v1/synthetic?mib=16&cpu_ms=30000");
        tokio::spawn(async move { http.post(url).send().await })
    };
    server
        .gate_until(Duration::from_secs(5), |s| s.running == 1)
        .await;
    assert!(server.gate.state().reserved >= 16 * MIB);

    // The client goes away: the job is cancelled at its next pass.
    request.abort();
    let state = server
        .gate_until(Duration::from_secs(10), |s| s.in_flight == 0)
        .await;
    assert_eq!((state.reserved, state.running, state.in_flight), (0, 0, 0));
}

#[tokio::test]
async fn a_client_that_leaves_mid_upload_gets_its_reservation_returned() {
    let server = TestServer::start(config(|_| {})).await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v1/transcode HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![0u8; 1 << 20]).await.unwrap();
    let state = server
        .gate_until(Duration::from_secs(5), |s| s.reserved >= 4 * MIB)
        .await;
    assert!(state.reserved >= 4 * MIB, "the declared length is reserved");

    drop(stream);
    let state = server
        .gate_until(Duration::from_secs(5), |s| s.in_flight == 0)
        .await;
    assert_eq!((state.reserved, state.in_flight), (0, 0));
}

#[tokio::test]
async fn a_job_past_its_deadline_is_504() {
    let server = TestServer::start(config(|c| c.server.job_timeout_ms = 200)).await;
    let body = problem(
        client()
            .post(server.url("/v1/synthetic?mib=1&cpu_ms=5000"))
            .send()
            .await
            .unwrap(),
        504,
    )
    .await;
    assert_eq!(body["type"], "/problems/deadline");
    let state = server
        .gate_until(Duration::from_secs(10), |s| s.in_flight == 0)
        .await;
    assert_eq!(state.reserved, 0, "the cancelled work returned its memory");
}

#[tokio::test]
async fn draining_finishes_jobs_in_flight_and_refuses_new_ones() {
    let server = TestServer::start(config(|c| c.gate.probe_jobs = 0)).await;
    let http = client();
    let mut running = Vec::new();
    for _ in 0..3 {
        let http = http.clone();
        let url = server.url("/v1/synthetic?mib=2&cpu_ms=600");
        running.push(tokio::spawn(async move { http.post(url).send().await }));
    }
    server
        .gate_until(Duration::from_secs(5), |s| s.running >= 1)
        .await;

    server.shut_down();
    server
        .gate_until(Duration::from_secs(2), |s| s.draining)
        .await;
    let ready = http.get(server.url("/readyz")).send().await.unwrap();
    problem(ready, 503).await;
    let refused = http
        .post(server.url("/v1/synthetic?mib=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(refused, 503).await["reason"], "draining");

    // Every job admitted before the signal is answered; none is lost.
    for job in running {
        let status = job.await.unwrap().unwrap().status().as_u16();
        assert!(status == 200 || status == 503, "job answered {status}");
    }
    server.stopped().await;
    assert_eq!(server.gate.state().in_flight, 0);
}

#[tokio::test]
async fn an_upload_refused_before_its_body_is_read_still_gets_its_refusal() {
    let server = TestServer::start(config(|c| c.gate.max_queue = 0)).await;
    let capacity = server.gate.state().capacity;
    let _held = server.gate.reserve_bytes(capacity - MIB).await.unwrap();

    // Far more than the sockets buffer: the client is still sending when
    // the refusal is written.
    let upload = vec![7u8; 32 * MIB as usize];
    let answer = client()
        .post(server.url("/v1/transcode"))
        .body(upload)
        .send()
        .await
        .expect("an answer, not a reset connection");
    let body = problem(answer, 503).await;
    assert_eq!(body["reason"], "queue_full");
}

#[tokio::test]
async fn a_refusal_survives_a_client_that_reads_it_late() {
    let server = TestServer::start(config(|c| c.gate.max_queue = 0)).await;
    let capacity = server.gate.state().capacity;
    let _held = server.gate.reserve_bytes(capacity - MIB).await.unwrap();

    // The client declares 32 MiB, sends 4 of them, and reads only later,
    // as a client on a loaded machine does: the unread bytes must not
    // turn the server's close into a reset that discards the refusal.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/transcode HTTP/1.1\r\nhost: memgate\r\ncontent-length: {}\r\n\r\n",
        32 * MIB
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&vec![7u8; 4 * MIB as usize])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut answer = vec![0u8; 4096];
    let read = stream
        .read(&mut answer)
        .await
        .expect("the refusal, not a reset connection");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("queue_full"), "{answer}");
}

#[tokio::test]
async fn a_running_job_is_shed_when_memory_keeps_rising_past_the_high_watermark() {
    let server = TestServer::start(config(|c| c.gate.probe_jobs = 0)).await;
    let http = client();
    let url = server.url("/v1/synthetic?mib=4&io_ms=30000");
    let job = tokio::spawn({
        let http = http.clone();
        async move { http.post(url).send().await }
    });
    server
        .gate_until(Duration::from_secs(5), |s| s.running == 1)
        .await;

    // Another process grows past the high watermark (97% of the 1 GiB
    // ceiling, 993 MiB), tick after tick.
    for mib in [1000, 1010, 1020, 1030] {
        server.working_set.store(mib * MIB, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }

    let answer = tokio::time::timeout(Duration::from_secs(5), job)
        .await
        .expect("answered long before its 30 s of I/O")
        .unwrap()
        .unwrap();
    assert!(answer.headers().contains_key("retry-after"));
    let body = problem(answer, 503).await;
    assert_eq!(body["reason"], "shed");
    let state = server
        .gate_until(Duration::from_secs(2), |s| s.in_flight == 0)
        .await;
    assert_eq!(
        (state.reserved, state.running, state.refused.shed),
        (0, 0, 1)
    );
    assert!(server.state.borrow().shed_jobs >= 1);
}

#[tokio::test]
async fn sigterm_in_the_middle_of_an_upload_still_answers_it_and_returns_its_memory() {
    let server = TestServer::start(config(|c| c.gate.probe_jobs = 0)).await;
    let image = support::images::png_rgba(64, 64);

    // The headers and half the body are in when the drain starts.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/transcode?width=32 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        image.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, second) = image.split_at(image.len() / 2);
    stream.write_all(first).await.unwrap();
    server
        .gate_until(Duration::from_secs(2), |s| s.in_flight == 1)
        .await;

    server.shut_down();
    server
        .gate_until(Duration::from_secs(2), |s| s.draining)
        .await;
    stream.write_all(second).await.unwrap();

    // Its job had not started: it is refused as draining, with a retry
    // delay that sends the client to another instance, not dropped.
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: "), "{answer}");
    server.stopped().await;
    let state = server.gate.state();
    assert_eq!((state.in_flight, state.reserved), (0, 0), "memory returned");
}

#[tokio::test]
async fn thousands_of_silent_connections_are_bounded_and_closed() {
    let server = TestServer::start(config(|c| {
        c.server.header_read_timeout_ms = 300;
        c.server.max_connections = 500;
    }))
    .await;

    // Far more connections than the server takes, none sending a byte.
    let mut silent = Vec::new();
    for _ in 0..2000 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }

    // Each is closed once it has sent nothing for the header timeout,
    // which frees its slot for the next in the backlog.
    let closed = async {
        for stream in &mut silent {
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap_or(0);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("every silent connection closed");
    let health = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the server still serves");
}

#[tokio::test]
async fn a_connection_past_the_limit_waits_until_one_closes() {
    let server = TestServer::start(config(|c| c.server.max_connections = 2)).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    // Two kept-alive connections hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }

    // A third is accepted by the kernel, not by the server.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
    assert!(early.is_err(), "answered past the limit");

    drop(held.pop());
    assert!(read_head(&mut third).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_client_that_leaves_while_its_job_waits_frees_its_place_and_never_runs() {
    let server = TestServer::start(config(|c| {
        c.gate.max_running = 1;
        c.gate.min_running = 1;
        c.gate.probe_jobs = 0;
    }))
    .await;
    let send = |query: &'static str| {
        let http = client();
        let url = server.url(&format!("/v1/synthetic?{query}"));
        tokio::spawn(async move { http.post(url).send().await })
    };
    let running = send("mib=4&cpu_ms=1000");
    server
        .gate_until(Duration::from_secs(5), |s| s.running == 1)
        .await;
    let waiting = send("mib=64");
    server
        .gate_until(Duration::from_secs(5), |s| s.queued == 1)
        .await;

    // The waiting client goes away: its place and its memory come back at
    // once, before the running job ends.
    waiting.abort();
    let state = server
        .gate_until(Duration::from_secs(2), |s| s.queued == 0)
        .await;
    assert_eq!((state.queued, state.in_flight), (0, 1), "{state:?}");
    assert!(state.reserved < 64 * MIB, "{}", state.reserved);

    assert_eq!(running.await.unwrap().unwrap().status(), 200);
    let state = server
        .gate_until(Duration::from_secs(5), |s| s.in_flight == 0)
        .await;
    assert_eq!((state.reserved, state.running), (0, 0));
    assert_eq!(
        state.admitted, 2,
        "the running job, and the waiter's memory"
    );

    // One job ran, to its end; the waiter's never started.
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let runs: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("memgate_job_duration_seconds_count"))
        .collect();
    assert_eq!(
        runs,
        [r#"memgate_job_duration_seconds_count{class="synthetic",outcome="done"} 1"#]
    );
}
