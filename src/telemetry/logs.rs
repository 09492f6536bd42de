//! Log lines in the shape Cloud Logging reads from a container's stdout.
//!
//! [`CloudLogging`] is a tracing [`Layer`] that writes one JSON object per
//! event and line. Cloud Logging lifts these keys out of it:
//!
//! | key | what |
//! |---|---|
//! | `severity` | `DEBUG` (also for trace events), `INFO`, `WARNING`, `ERROR` |
//! | `message` | the event's message |
//! | `time` | when the event happened, RFC 3339 in UTC |
//! | `httpRequest` | a request line's `http.*` fields, as a `LogEntry` `HttpRequest` |
//! | `logging.googleapis.com/trace` | `projects/<project>/traces/<trace>` |
//! | `logging.googleapis.com/spanId` | the span id, 16 hexadecimal digits |
//!
//! `target` (the module that logged) and the event's other fields follow
//! at the top level, numbers as numbers. The trace comes from the `trace`
//! and `span_id` fields of the event's span or of one of its parents, as
//! the server records them from `X-Cloud-Trace-Context`.

use std::io::{self, Write as _};

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The environment variable the project id is read from.
pub const PROJECT_ENV: &str = "GOOGLE_CLOUD_PROJECT";

/// A [`Layer`] writing events as JSON lines in Cloud Logging's shape.
///
/// # Examples
///
/// ```
/// use memgate::telemetry::logs::CloudLogging;
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let subscriber = tracing_subscriber::registry()
///     .with(CloudLogging::new(Some("my-project".to_owned()), std::io::stderr));
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::info!(capacity = 1_u64 << 30, "gate sized");
/// });
/// ```
#[derive(Debug)]
pub struct CloudLogging<W = fn() -> io::Stdout> {
    project: Option<String>,
    make_writer: W,
}

/// The trace a span carries, kept in the span's extensions.
#[derive(Clone, Debug, Default)]
struct SpanTrace {
    trace: Option<String>,
    span_id: Option<String>,
}

/// An event's fields, sorted into the line's parts.
#[derive(Debug, Default)]
struct EventFields {
    message: Option<String>,
    http: HttpRequest,
    other: Map<String, Value>,
}

/// Cloud Logging's `HttpRequest`. Sizes are strings because the API
/// writes int64 as strings in JSON; latency is a protobuf `Duration`.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    request_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_size: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
}

/// One line, in the order its keys are written.
#[derive(Serialize)]
struct Entry<'a> {
    severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    message: &'a str,
    target: &'a str,
    #[serde(rename = "httpRequest", skip_serializing_if = "Option::is_none")]
    http_request: Option<&'a HttpRequest>,
    #[serde(
        rename = "logging.googleapis.com/trace",
        skip_serializing_if = "Option::is_none"
    )]
    trace: Option<String>,
    #[serde(
        rename = "logging.googleapis.com/spanId",
        skip_serializing_if = "Option::is_none"
    )]
    span_id: Option<String>,
    #[serde(flatten)]
    fields: &'a Map<String, Value>,
}

/// Keys the line itself writes; an event field of the same name is
/// written as `fields.<name>` so that the line stays one object with
/// unique keys.
/// RFC 3339 in UTC with all nine digits of the nanoseconds: the well-known
/// `Rfc3339` format leaves the fraction out when it is zero, and the lines
/// of one burst are told apart and ordered by it.
const TIME_FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

const RESERVED: [&str; 7] = [
    "severity",
    "time",
    "message",
    "target",
    "httpRequest",
    "logging.googleapis.com/trace",
    "logging.googleapis.com/spanId",
];

impl CloudLogging {
    /// A layer writing to stdout, with the project id read once from
    /// `GOOGLE_CLOUD_PROJECT`. Without it, traces are written as bare ids,
    /// which Cloud Logging shows but does not link to Cloud Trace.
    pub fn from_env() -> Self {
        let project = std::env::var(PROJECT_ENV)
            .ok()
            .filter(|project| !project.is_empty());
        Self::new(project, io::stdout)
    }
}

impl<W> CloudLogging<W> {
    /// A layer writing to `make_writer`; `project` qualifies trace ids.
    pub fn new(project: Option<String>, make_writer: W) -> Self {
        Self {
            project,
            make_writer,
        }
    }

    /// The line for `event`, newline included.
    fn line(&self, event: &Event<'_>, span: Option<&SpanTrace>) -> Option<Vec<u8>> {
        let mut fields = EventFields::default();
        event.record(&mut fields);

        let metadata = event.metadata();
        let trace = span.and_then(|s| s.trace.as_deref());
        let span_id = span.and_then(|s| s.span_id.as_deref());
        let entry = Entry {
            severity: severity(metadata.level()),
            time: OffsetDateTime::now_utc().format(TIME_FORMAT).ok(),
            message: fields.message.as_deref().unwrap_or_default(),
            target: metadata.target(),
            http_request: fields.http.is_set().then_some(&fields.http),
            trace: trace.map(|trace| self.trace_name(trace)),
            span_id: span_id.map(span_id_hex),
            fields: &fields.other,
        };

        // Serializing strings, numbers and maps with string keys into a
        // vector cannot fail; a failure would lose only this line.
        let mut line = serde_json::to_vec(&entry).ok()?;
        line.push(b'\n');
        Some(line)
    }

    fn trace_name(&self, trace: &str) -> String {
        match &self.project {
            Some(project) => format!("projects/{project}/traces/{trace}"),
            None => trace.to_owned(),
        }
    }
}

impl<S, W> Layer<S> for CloudLogging<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut trace = SpanTrace::default();
        attrs.record(&mut trace);
        if let (true, Some(span)) = (trace.is_set(), ctx.span(id)) {
            span.extensions_mut().insert(trace);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let mut trace = extensions.remove::<SpanTrace>().unwrap_or_default();
        values.record(&mut trace);
        if trace.is_set() {
            extensions.insert(trace);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // The nearest span with a trace: the request span, or the span of
        // a job spawned from it.
        let trace = ctx.event_scope(event).and_then(|mut scope| {
            scope.find_map(|span| span.extensions().get::<SpanTrace>().cloned())
        });
        let Some(line) = self.line(event, trace.as_ref()) else {
            return;
        };

        // One write per line, so that lines of concurrent events do not
        // interleave. A log line that cannot be written has nowhere to be
        // reported.
        let mut writer = self.make_writer.make_writer_for(event.metadata());
        let _ = writer.write_all(&line);
    }
}

impl SpanTrace {
    fn is_set(&self) -> bool {
        self.trace.is_some() || self.span_id.is_some()
    }
}

impl Visit for SpanTrace {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace" => self.trace = Some(value.to_owned()),
            "span_id" => self.span_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "trace" | "span_id") {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

impl EventFields {
    fn insert(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if let Some(key) = name.strip_prefix("http.")
            && self.http.take(key, &value)
        {
            return;
        }
        if name == "message" {
            self.message = Some(text(value));
            return;
        }

        let name = if RESERVED.contains(&name) {
            format!("fields.{name}")
        } else {
            name.to_owned()
        };
        self.other.insert(name, value);
    }
}

impl Visit for EventFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let value =
            i64::try_from(value).map_or_else(|_| Value::from(value.to_string()), Value::from);
        self.insert(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let value =
            u64::try_from(value).map_or_else(|_| Value::from(value.to_string()), Value::from);
        self.insert(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::from(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, Value::from(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.insert(field, Value::from(format!("{value:?}")));
    }
}

impl HttpRequest {
    fn is_set(&self) -> bool {
        self.request_method.is_some() || self.request_url.is_some() || self.status.is_some()
    }

    /// Takes the field `http.<key>` if it is one of the request's; returns
    /// whether it was. Empty values (no `User-Agent`, no `Content-Length`)
    /// are taken and left out.
    fn take(&mut self, key: &str, value: &Value) -> bool {
        match key {
            "method" => self.request_method = non_empty(value),
            "url" => self.request_url = non_empty(value),
            "status" => self.status = value.as_u64(),
            "latency_ms" => self.latency = value.as_f64().and_then(latency),
            "request_size" => self.request_size = size(value),
            "response_size" => self.response_size = size(value),
            "remote_ip" => self.remote_ip = non_empty(value),
            "user_agent" => self.user_agent = non_empty(value),
            _ => return false,
        }
        true
    }
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::TRACE | Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARNING",
        Level::ERROR => "ERROR",
    }
}

/// `X-Cloud-Trace-Context` gives the span id in decimal, but Cloud Logging
/// wants the 16 hexadecimal digits of the same 64-bit number. An id that is
/// not a decimal number is passed on as it came.
fn span_id_hex(span_id: &str) -> String {
    match span_id.parse::<u64>() {
        Ok(id) => format!("{id:016x}"),
        Err(_) => span_id.to_owned(),
    }
}

/// A protobuf `Duration` in JSON: seconds with up to nine decimals and an
/// `s`, such as `"0.012s"`.
fn latency(milliseconds: f64) -> Option<String> {
    if !milliseconds.is_finite() || milliseconds < 0.0 {
        return None;
    }
    let seconds = format!("{:.9}", milliseconds / 1000.0);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    Some(format!("{seconds}s"))
}

/// A size as the int64 string the API expects, from a number or from a
/// header's text.
fn size(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::String(s) => s.trim().parse::<u64>().ok().map(|n| n.to_string()),
        _ => None,
    }
}

fn non_empty(value: &Value) -> Option<String> {
    Some(text(value.clone())).filter(|s| !s.is_empty())
}

fn text(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use time::format_description::well_known::Rfc3339;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A writer that keeps everything written to it.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    /// Runs `emit` under a [`CloudLogging`] layer for `project` and parses
    /// every line it wrote.
    fn lines(project: Option<&str>, emit: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let layer = CloudLogging::new(project.map(str::to_owned), buffer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);

        let bytes = buffer.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.ends_with('\n'), "unterminated line: {text}");
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The server's request line, in the server's own request span.
    fn request_line(trace: Option<&str>, span_id: Option<&str>) {
        let trace = trace.map(str::to_owned);
        let span_id = span_id.map(str::to_owned);
        let span = tracing::debug_span!("request", trace, span_id);
        tracing::debug!(
            parent: &span,
            http.method = %http::Method::POST,
            http.url = "/v1/transcode?width=1024",
            http.status = 200_u16,
            http.latency_ms = 12.0,
            http.request_size = "1048576",
            http.response_size = 53_211_u64,
            http.remote_ip = %std::net::Ipv4Addr::new(10, 0, 0, 7),
            http.user_agent = "",
            "request"
        );
    }

    #[test]
    fn an_info_event_has_severity_message_time_and_target() {
        let lines = lines(None, || tracing::info!("listening"));

        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["severity"], "INFO");
        assert_eq!(line["message"], "listening");
        assert_eq!(line["target"], module_path!());
        let time = line["time"].as_str().unwrap();
        let parsed = OffsetDateTime::parse(time, &Rfc3339).unwrap();
        assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{time}");
        let fraction = time.split_once('.').map(|(_, f)| f.trim_end_matches('Z'));
        assert_eq!(fraction.map(str::len), Some(9), "{time}");
        assert!(line.get("level").is_none() && line.get("fields").is_none());
    }

    #[test]
    fn a_warning_keeps_its_fields_at_the_top_level_with_their_types() {
        let lines = lines(None, || {
            tracing::warn!(
                working_set = 1_900_000_000_u64,
                ratio = 0.95,
                pressure = true,
                reason = "pressure",
                "memory pressure engaged"
            )
        });

        let line = &lines[0];
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["message"], "memory pressure engaged");
        assert_eq!(line["working_set"], 1_900_000_000_u64);
        assert_eq!(line["ratio"], 0.95);
        assert_eq!(line["pressure"], true);
        assert_eq!(line["reason"], "pressure");
    }

    #[test]
    fn levels_map_to_cloud_logging_severities() {
        let lines = lines(None, || {
            tracing::trace!("t");
            tracing::debug!("d");
            tracing::error!("e");
        });

        let severities: Vec<&str> = lines
            .iter()
            .map(|line| line["severity"].as_str().unwrap())
            .collect();
        assert_eq!(severities, ["DEBUG", "DEBUG", "ERROR"]);
    }

    #[test]
    fn a_request_line_carries_an_http_request_and_its_trace() {
        let trace = "105445aa7843bc8bf206b12000100000";
        let lines = lines(Some("memgate-prod"), || {
            request_line(Some(trace), Some("74"))
        });

        let line = &lines[0];
        assert_eq!(line["severity"], "DEBUG");
        assert_eq!(line["message"], "request");
        let http = &line["httpRequest"];
        assert_eq!(http["requestMethod"], "POST");
        assert_eq!(http["requestUrl"], "/v1/transcode?width=1024");
        assert_eq!(http["status"], 200);
        assert_eq!(http["latency"], "0.012s");
        assert_eq!(http["requestSize"], "1048576");
        assert_eq!(http["responseSize"], "53211");
        assert_eq!(http["remoteIp"], "10.0.0.7");
        assert!(http.get("userAgent").is_none(), "{http}");
        assert_eq!(
            line["logging.googleapis.com/trace"],
            format!("projects/memgate-prod/traces/{trace}")
        );
        assert_eq!(line["logging.googleapis.com/spanId"], "000000000000004a");

        let object = line.as_object().unwrap();
        assert!(
            object.keys().all(|key| !key.starts_with("http.")),
            "http fields left at the top level: {line}"
        );
    }

    #[test]
    fn without_a_project_the_trace_is_the_bare_id() {
        let lines = lines(None, || request_line(Some("abc123"), None));

        assert_eq!(lines[0]["logging.googleapis.com/trace"], "abc123");
        assert!(lines[0].get("logging.googleapis.com/spanId").is_none());
    }

    #[test]
    fn events_in_a_child_of_the_request_span_carry_its_trace() {
        let lines = lines(Some("p"), || {
            let request = tracing::info_span!("request", trace = "feed", span_id = "1");
            let job = tracing::info_span!(parent: &request, "job", class = "jpeg");
            job.in_scope(|| tracing::error!(kind = "jpeg", "job panicked"));
        });

        assert_eq!(
            lines[0]["logging.googleapis.com/trace"],
            "projects/p/traces/feed"
        );
        assert_eq!(
            lines[0]["logging.googleapis.com/spanId"],
            "0000000000000001"
        );
        assert_eq!(lines[0]["kind"], "jpeg");
    }

    #[test]
    fn a_request_without_a_trace_header_has_no_trace_key() {
        let lines = lines(Some("p"), || request_line(None, None));

        assert!(lines[0].get("logging.googleapis.com/trace").is_none());
        assert_eq!(lines[0]["httpRequest"]["status"], 200);
    }

    #[test]
    fn a_field_named_like_a_reserved_key_does_not_replace_it() {
        let lines = lines(None, || tracing::info!(severity = "low", "x"));

        assert_eq!(lines[0]["severity"], "INFO");
        assert_eq!(lines[0]["fields.severity"], "low");
    }

    #[test]
    fn latency_is_a_protobuf_duration() {
        assert_eq!(latency(12.0).as_deref(), Some("0.012s"));
        assert_eq!(latency(1500.25).as_deref(), Some("1.50025s"));
        assert_eq!(latency(0.0).as_deref(), Some("0s"));
        assert_eq!(latency(f64::NAN), None);
        assert_eq!(latency(-1.0), None);
    }
}
