//! The figures of a run and the files they are written to: a markdown
//! table, a JSON file with every figure and series, and an SVG plot of
//! memory and the gate over time.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Serialize;
use serde_json::Value;

use crate::driver::{Record, Refused};
use crate::sampler::{GatePoint, Series, ServerRefusals};
use crate::stability::Stability;
use crate::workload::{Mode, Settings};

const MIB: f64 = (1u64 << 20) as f64;

/// How a process ended, for the report.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ended {
    /// When, in ms since the burst started.
    pub at_ms: f64,
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it: 9 is the OOM killer's.
    pub signal: Option<i32>,
}

/// Everything measured in one mode.
#[derive(Clone, Debug, Serialize)]
pub struct ModeRun {
    /// The mode and the server environment it set.
    pub mode: Mode,
    /// The cgroup the server ran in.
    pub cgroup: String,
    /// Its memory limit, in bytes.
    pub limit: u64,
    /// The server's pid, checked to be in the cgroup.
    pub server_pid: u32,
    /// Its memory line of `/proc/<pid>/cgroup`, read once it served.
    pub server_membership: String,
    /// `/v1/admission`'s `ceiling` before the burst: what the server
    /// detected.
    pub ceiling: Value,
    /// Whether the server's detected limit is the cgroup's.
    pub server_saw_limit: bool,
    /// OOM kills in the cgroup during the run.
    pub oom_kills: u64,
    /// How the server ended before it was asked to stop, if it did.
    pub server_died: Option<Ended>,
    /// How it ended once asked to stop.
    pub server_stopped: Option<Ended>,
    /// How the surge holder ended, when there was one.
    pub holder: Option<Ended>,
    /// Why the surge holder could not run, when it could not.
    pub holder_error: Option<String>,
    /// The kernel's high-water mark of the cgroup's usage, in bytes.
    pub kernel_peak: Option<u64>,
    /// The highest sampled usage, in bytes.
    pub sampled_peak: u64,
    /// The highest sampled working set, in bytes.
    pub sampled_peak_working_set: u64,
    /// The figures of the burst.
    pub summary: Summary,
    /// Refusals as the server timed them, when it could still be asked.
    pub server_refusals: Option<ServerRefusals>,
    /// Drift, swings and what was returned, for a long run (`soak`).
    pub stability: Option<Stability>,
    /// Memory and gate over time.
    pub series: Series,
    /// Every request.
    pub requests: Vec<Record>,
}

impl ModeRun {
    /// The peak usage: the kernel's mark, or the sampled one when the
    /// kernel keeps none or it is lower.
    pub fn peak(&self) -> u64 {
        self.kernel_peak.unwrap_or(0).max(self.sampled_peak)
    }
}

/// The burst's figures. Times in ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Requests in the burst.
    pub requests: usize,
    /// Requests answered 2xx.
    pub succeeded: usize,
    /// `succeeded` as a percentage of `requests`.
    pub success_pct: f64,
    /// Final outcomes by status, or by failure.
    pub outcomes: BTreeMap<String, usize>,
    /// Latency of the successful requests.
    pub served: Percentiles,
    /// Latency of every request that ended, successful or not.
    pub all: Percentiles,
    /// From the first send to the last answer, in seconds.
    pub wall_s: f64,
    /// Successful jobs per second of `wall_s`.
    pub goodput: f64,
    /// Refused answers (every attempt) that carried `Retry-After`.
    pub refused_with_retry_after: usize,
    /// Requests whose first attempt was refused.
    pub first_attempt_refused: usize,
    /// The slowest refusal at admission, first attempts and retries
    /// alike. Shed jobs are not in it: they were refused mid-run.
    pub max_refusal_ms: Option<f64>,
    /// The slowest refusal at admission of a first attempt.
    pub max_first_refusal_ms: Option<f64>,
    /// Attempts answered `shed`: running jobs stopped to keep memory
    /// under the limit.
    pub shed: usize,
    /// The longest a shed attempt waited for its answer.
    pub max_shed_ms: Option<f64>,
    /// When the first refusal came, since the start.
    pub first_refusal_at_ms: Option<f64>,
    /// Requests that ended without an answer because the connection failed
    /// or broke: how a dead server shows.
    pub connection_errors: usize,
    /// Requests whose last attempt timed out.
    pub timeouts: usize,
    /// Requests abandoned at the run's deadline, sent or not.
    pub abandoned: usize,
}

/// Nearest-rank percentiles, in ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// How many values.
    pub count: usize,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * values.len() as f64).ceil() as usize).max(1) - 1;
            values.get(i).copied()
        };
        Self {
            count: values.len(),
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: values.last().copied(),
        }
    }
}

impl Summary {
    /// The figures of `records`.
    pub fn of(records: &[Record]) -> Self {
        let succeeded = records.iter().filter(|r| r.succeeded()).count();
        let latencies = |ok: bool| {
            let values = records
                .iter()
                .filter(|r| !ok || r.succeeded())
                .filter_map(|r| r.latency_ms);
            Percentiles::of(values.collect())
        };
        let answers = || records.iter().flat_map(|r| &r.refusals);
        let is_shed = |f: &&Refused| f.reason.as_deref() == Some("shed");
        let refusals = || answers().filter(|f| !is_shed(f));
        let shed = || answers().filter(is_shed);
        let first_refusals = || refusals().filter(|f| f.attempt == 1);
        let max = |it: &mut dyn Iterator<Item = f64>| it.max_by(f64::total_cmp);
        let first_send = records
            .iter()
            .filter_map(|r| r.sent_ms)
            .min_by(f64::total_cmp);
        let last_answer = records
            .iter()
            .filter_map(|r| r.finished_ms)
            .max_by(f64::total_cmp);
        let wall_s = match (first_send, last_answer) {
            (Some(a), Some(b)) if b > a => (b - a) / 1000.0,
            _ => 0.0,
        };
        let failures = |f: fn(&Record) -> bool| records.iter().filter(|r| f(r)).count();
        Self {
            requests: records.len(),
            succeeded,
            success_pct: percent(succeeded, records.len()),
            outcomes: outcomes(records),
            served: latencies(true),
            all: latencies(false),
            wall_s,
            goodput: if wall_s > 0.0 {
                succeeded as f64 / wall_s
            } else {
                0.0
            },
            refused_with_retry_after: answers().filter(|f| f.retry_after_s.is_some()).count(),
            first_attempt_refused: first_refusals().count(),
            max_refusal_ms: max(&mut refusals().map(|f| f.answer_ms)),
            max_first_refusal_ms: max(&mut first_refusals().map(|f| f.answer_ms)),
            first_refusal_at_ms: refusals().map(|f| f.at_ms).min_by(f64::total_cmp),
            shed: shed().count(),
            max_shed_ms: max(&mut shed().map(|f| f.answer_ms)),
            connection_errors: failures(|r| r.failure.is_some_and(|f| f.is_connection())),
            timeouts: failures(|r| r.failure == Some(crate::driver::Failure::Timeout)),
            abandoned: failures(|r| r.failure == Some(crate::driver::Failure::Deadline)),
        }
    }
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn outcomes(records: &[Record]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in records {
        let key = match (record.failure, record.status, &record.reason) {
            (Some(failure), ..) => format!("{failure:?}").to_lowercase(),
            (None, Some(status), Some(reason)) => format!("{status} {reason}"),
            (None, Some(status), None) => status.to_string(),
            (None, None, _) => "none".to_owned(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// The whole output of one workload.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// The workload's settings.
    pub settings: &'a Settings,
    /// The cgroup memory limit, in bytes.
    pub limit: u64,
    /// One entry per mode, in the order run.
    pub runs: &'a [ModeRun],
}

/// The markdown table of `runs`, with a note under it for anything that
/// qualifies a figure.
pub fn table(report: &Report<'_>) -> String {
    let mut out = String::from(
        "| mode | peak MiB | peak % of limit | OOM kills | success % | p50 ms | \
         p99 ms (served) | goodput jobs/s | refused (Retry-After) | max refusal ms | \
         refusals in 10 ms (server) | connection errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for run in report.runs {
        let s = &run.summary;
        out += &format!(
            "| {} | {:.0} | {:.1} | {} | {:.1} | {} | {} | {:.2} | {} | {} | {} | {} |\n",
            run.mode.label,
            run.peak() as f64 / MIB,
            100.0 * run.peak() as f64 / run.limit as f64,
            run.oom_kills,
            s.success_pct,
            ms(s.served.p50),
            ms(s.served.p99),
            s.goodput,
            s.refused_with_retry_after,
            ms(s.max_refusal_ms),
            within_10ms(run.server_refusals),
            s.connection_errors,
        );
    }
    for run in report.runs {
        out += &notes(run);
    }
    out += &verdict(report.runs);
    out
}

/// Highest peak, as a share of the limit, at which a run counts as safe:
/// the bar `adaptive` is held to. A pool that survives at 97% of its limit
/// survives nothing else taking memory.
const SAFE_PEAK: f64 = 0.92;

fn is_safe(run: &ModeRun) -> bool {
    run.oom_kills == 0
        && run.server_died.is_none()
        && run.peak() as f64 <= SAFE_PEAK * run.limit as f64
}

/// `adaptive` against the best safe `fixed` run, when both ran: the
/// figures the benchmark is held to.
fn verdict(runs: &[ModeRun]) -> String {
    let adaptive = runs.iter().find(|r| r.mode.gate_mode == "adaptive");
    let fixed = runs
        .iter()
        .filter(|r| r.mode.gate_mode == "fixed" && is_safe(r))
        .max_by(|a, b| a.summary.goodput.total_cmp(&b.summary.goodput));
    let (Some(adaptive), Some(fixed)) = (adaptive, fixed) else {
        return String::new();
    };
    let (a, f) = (&adaptive.summary, &fixed.summary);
    format!(
        "\nSafe: no OOM kill and a peak at or under {:.0}% of the limit. \
         Best safe fixed pool: {} ({:.2} jobs/s, p99 {} ms). adaptive: \
         {}safe, goodput {:.2}x the best safe pool's, p99 {} ms, slowest \
         refusal {} ms at the client, refusals within 10 ms at the server: \
         {}.\n",
        SAFE_PEAK * 100.0,
        fixed.mode.label,
        f.goodput,
        ms(f.served.p99),
        if is_safe(adaptive) { "" } else { "not " },
        a.goodput / f.goodput,
        ms(a.served.p99),
        ms(a.max_refusal_ms),
        within_10ms(adaptive.server_refusals),
    )
}

/// "all", "none" or "N of M" refusals at admission the server answered
/// within 10 ms. Shed jobs are answered 503 too, after running: they are
/// taken out of the count and named apart.
fn within_10ms(refusals: Option<ServerRefusals>) -> String {
    let Some(r) = refusals else {
        return "-".to_owned();
    };
    let admission = r.count.saturating_sub(r.shed);
    let within = r.within_10ms.min(admission);
    let mut text = match admission {
        0 => "none refused".to_owned(),
        n if within == n => format!("all {n}"),
        n => format!("{within} of {n}"),
    };
    if r.shed > 0 {
        text += &format!(" (+{} shed)", r.shed);
    }
    text
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

/// Lines under the table for what a row alone does not say.
fn notes(run: &ModeRun) -> String {
    let mut out = String::new();
    let label = &run.mode.label;
    if let Some(died) = run.server_died {
        out += &format!("\n- {label}: the server {}.", how(died));
    }
    if let Some(holder) = run.holder.filter(|h| h.code != Some(0)) {
        out += &format!("\n- {label}: the surge holder {}.", how(holder));
    }
    if !run.server_saw_limit {
        out += &format!(
            "\n- {label}: the server did not detect the cgroup's limit \
             (ceiling {}).",
            run.ceiling
        );
    }
    if let Some(error) = &run.holder_error {
        out += &format!("\n- {label}: the surge holder did not run: {error}.");
    }
    if run.summary.shed > 0 {
        out += &format!(
            "\n- {label}: {} running jobs were shed, answered 503 `shed` \
             with `Retry-After` after up to {} ms; they are counted among \
             the refused, not in the refusal times.",
            run.summary.shed,
            ms(run.summary.max_shed_ms)
        );
    }
    if let Some(stability) = &run.stability {
        out += stability.markdown(label).trim_end();
    }
    if run.summary.abandoned > 0 {
        out += &format!(
            "\n- {label}: {} requests were abandoned at the run's deadline.",
            run.summary.abandoned
        );
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

fn how(ended: Ended) -> String {
    let what = match (ended.signal, ended.code) {
        (Some(9), _) => "was killed (SIGKILL)".to_owned(),
        (Some(signal), _) => format!("ended by signal {signal}"),
        (None, Some(code)) => format!("exited with code {code}"),
        (None, None) => "ended".to_owned(),
    };
    format!("{what} at {:.1} s", ended.at_ms / 1000.0)
}

/// Writes `<stem>.md`, `<stem>.json` and `<stem>.svg` into `dir`.
///
/// # Errors
///
/// When a file cannot be written or the plot cannot be drawn.
pub fn write(dir: &Path, stem: &str, report: &Report<'_>) -> Result<(), String> {
    let save = |name: String, text: &str| {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let heading = format!(
        "# {} under a {:.0} MiB limit\n\n",
        report.settings.workload.name(),
        report.limit as f64 / MIB
    );
    save(format!("{stem}.md"), &(heading + &table(report)))?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| format!("cannot encode the report: {e}"))?;
    save(format!("{stem}.json"), &json)?;
    plot(&dir.join(format!("{stem}.svg")), report)
}

/// Colours of the modes, in the order run.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

/// Memory over time per mode with the limit, above; capacity (solid) and
/// reserved (dashed) over time, below.
fn plot(path: &Path, report: &Report<'_>) -> Result<(), String> {
    let drawn = draw(path, report);
    drawn.map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw(path: &Path, report: &Report<'_>) -> DrawResult<()> {
    let t_max = report
        .runs
        .iter()
        .flat_map(|r| r.series.memory.iter().map(|p| p.t_ms / 1000.0))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(400);
    draw_memory(&upper, report, t_max)?;
    draw_gate(&lower, report, t_max)?;
    root.present()
}

fn draw_memory(area: &Area<'_>, report: &Report<'_>, t_max: f64) -> DrawResult<()> {
    let limit = report.limit as f64 / MIB;
    let title = format!("{}: cgroup memory usage", report.settings.workload.name());
    let mut chart = new_chart(area, &title, t_max, limit * 1.1)?;
    let limit_line = vec![(0.0, limit), (t_max, limit)];
    chart
        .draw_series(DashedLineSeries::new(limit_line, 8, 4, RED.stroke_width(2)))?
        .label("limit")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    for (i, run) in report.runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points = run
            .series
            .memory
            .iter()
            .map(|p| (p.t_ms / 1000.0, mib(p.usage)));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(run.mode.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    legend(&mut chart)
}

/// Capacity past twice the limit (the modes that do not gate memory) is
/// left out rather than squashed against the top.
fn draw_gate(area: &Area<'_>, report: &Report<'_>, t_max: f64) -> DrawResult<()> {
    let limit = report.limit as f64 / MIB;
    let shown = |p: &&GatePoint| mib(p.capacity) <= 2.0 * limit;
    let points = || report.runs.iter().flat_map(|r| &r.series.gate);
    let y_max = points()
        .map(|p| mib(p.reserved))
        .chain(points().filter(shown).map(|p| mib(p.capacity)))
        .fold(limit, f64::max);
    let title = "gate capacity (solid, none where ungated) and reserved (dashed)";
    let mut chart = new_chart(area, title, t_max, y_max * 1.1)?;
    let limit_line = vec![(0.0, limit), (t_max, limit)];
    chart.draw_series(DashedLineSeries::new(limit_line, 8, 4, RED.stroke_width(2)))?;
    for (i, run) in report.runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let gate = &run.series.gate;
        let capacity = gate
            .iter()
            .filter(shown)
            .map(|p| (p.t_ms / 1000.0, mib(p.capacity)));
        let reserved: Vec<_> = gate
            .iter()
            .map(|p| (p.t_ms / 1000.0, mib(p.reserved)))
            .collect();
        chart
            .draw_series(LineSeries::new(capacity, colour.stroke_width(2)))?
            .label(run.mode.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart.draw_series(DashedLineSeries::new(
            reserved,
            4,
            3,
            colour.stroke_width(1),
        ))?;
    }
    legend(&mut chart)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

type Area<'b> = DrawingArea<SVGBackend<'b>, plotters::coord::Shift>;

type Axes = Cartesian2d<RangedCoordf64, RangedCoordf64>;

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Axes>;

type DrawResult<T> = Result<T, DrawingAreaErrorKind<std::io::Error>>;

fn new_chart<'a, 'b>(
    area: &'a Area<'b>,
    title: &str,
    t_max: f64,
    y_max: f64,
) -> DrawResult<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the burst started")
        .y_desc("MiB")
        .draw()?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> DrawResult<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
}
