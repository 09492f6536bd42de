//! The controller against scripted machines: every scenario file under
//! `tests/data/scenarios/` runs under tokio's paused clock, and its
//! expected ranges are checked.
//!
//! `cargo test --test scenarios -- --nocapture` prints each run's figures.

mod sim;

use std::path::Path;

use sim::{Report, Scenario};

fn check(name: &str, scenario: &Scenario, report: &Report) -> Vec<String> {
    let expect = &scenario.expect;
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(format!("{name}: {what}"));

    if report.working_set_ratio() > expect.max_working_set_ratio {
        fail(format!(
            "working set reached {:.3} of the ceiling, above {}",
            report.working_set_ratio(),
            expect.max_working_set_ratio
        ));
    }
    let completed = report.completed as f64 / report.arrived as f64;
    if completed < expect.min_completed_ratio {
        fail(format!(
            "completed {completed:.3} of jobs, below {}",
            expect.min_completed_ratio
        ));
    }
    if report.throughput() < expect.min_throughput {
        fail(format!(
            "throughput {:.2} jobs/s, below {}",
            report.throughput(),
            expect.min_throughput
        ));
    }
    if let Some(within) = expect.recover_within_ticks {
        for (i, recovery) in report.recoveries.iter().enumerate() {
            match recovery {
                Some(ticks) if *ticks <= within => {}
                other => fail(format!(
                    "capacity after surge {i} recovered in {other:?} ticks, expected within {within}"
                )),
            }
        }
    }
    if let Some(max) = expect.max_mean_running_limit
        && report.mean_running_limit > max
    {
        fail(format!(
            "mean running limit {:.1} while jobs queued, above {max}",
            report.mean_running_limit
        ));
    }
    if report.purges < expect.min_purges {
        fail(format!(
            "{} purges, expected at least {}",
            report.purges, expect.min_purges
        ));
    }
    if report.shed_jobs < expect.min_shed {
        fail(format!(
            "{} jobs shed, expected at least {}",
            report.shed_jobs, expect.min_shed
        ));
    }
    for (class, min) in &expect.min_class_factor {
        let factor = report.class_factors.get(class).copied().unwrap_or(1.0);
        if factor < *min {
            fail(format!(
                "class {class} learned factor {factor:.2}, below {min}"
            ));
        }
    }
    failures
}

fn run(path: &Path) -> Vec<String> {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let scenario: Scenario = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let report = runtime.block_on(sim::run(&scenario));

    println!(
        "{name}: {}\n  max working set {:.3} of ceiling ({} MiB), completed {}/{}, \
         throughput {:.2} jobs/s, refusals {:?}, recoveries {:?} ticks, \
         pressure ticks {}, purges {}, jobs shed {}, capacity moves {}, \
         mean running limit {:.1}, class factors {:?}",
        scenario.description,
        report.working_set_ratio(),
        report.max_working_set >> 20,
        report.completed,
        report.arrived,
        report.throughput(),
        report.refusals,
        report.recoveries,
        report.pressure_ticks,
        report.purges,
        report.shed_jobs,
        report.capacity_moves,
        report.mean_running_limit,
        report.class_factors,
    );
    check(&name, &scenario, &report)
}

#[test]
fn every_scenario_stays_within_its_expected_ranges() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 5, "scenarios missing from {}", dir.display());

    // `SCENARIO=burst cargo test --test scenarios` runs only matching files.
    if let Ok(only) = std::env::var("SCENARIO") {
        paths.retain(|p| p.to_string_lossy().contains(&only));
    }

    let failures: Vec<String> = paths.iter().flat_map(|p| run(p)).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
