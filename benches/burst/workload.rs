//! Workloads and admission modes, as the command line names them.
//!
//! A workload is a burst of jobs (synthetic, images or both) and, for
//! `surge`, memory taken by another process in the same cgroup while the
//! jobs run.
//! A mode is the server's `gate.mode` and the keys that size it.

use std::path::Path;
use std::sync::Arc;

use clap::ValueEnum;
use serde::Serialize;

use crate::driver::Job;
use crate::images;

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// 500 synthetic jobs of 150 MiB within 10 s, each 150 ms of CPU and
    /// 1 s of storage I/O with its memory held: the incident that
    /// OOM-kills one task per request.
    Incident,
    /// 400 of the incident's jobs over 40 s, about what the instance
    /// serves, while another process in the container takes 600 MiB over
    /// 2 s and keeps it for 20 s.
    Surge,
    /// 400 JPEGs of 1 to 40 MP, mostly small, transcoded to 1024 px,
    /// within 4 s.
    MixedImages,
    /// 30 minutes of the two together, one synthetic job in four, at 36
    /// jobs/s, about 1.5 times what the instance serves, without retries:
    /// does memory drift, does capacity swing, is everything returned.
    Soak,
}

impl Kind {
    /// The name on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Incident => "incident",
            Self::Surge => "surge",
            Self::MixedImages => "mixed-images",
            Self::Soak => "soak",
        }
    }

    /// The workload as the issue describes it; flags override each part.
    pub fn defaults(self) -> Settings {
        let base = Settings {
            workload: self,
            requests: 500,
            seconds: 10.0,
            mib: 150,
            cpu_ms: 250,
            io_ms: 0,
            retries: 5,
            surge: None,
            warmup_secs: 0.0,
            max_mp: 40,
            seed: 1,
        };
        match self {
            // Memory binds before CPU: a job holds its 150 MiB for about
            // 1.2 s but uses a core for 150 ms of it, as a job that reads
            // its input from storage and writes its output back does.
            Self::Incident => Settings {
                cpu_ms: 150,
                io_ms: 1000,
                ..base
            },
            // A steady load of the incident's jobs at 10 per second, about
            // what twelve at once serve, so that the instance is full when
            // another process grows by 600 MiB over 2 s (300 MiB/s, a
            // process reading its data in) and keeps it for 20 s. A pool
            // sized for the quiet time meets the surge with no room left.
            Self::Surge => Settings {
                requests: 400,
                seconds: 40.0,
                cpu_ms: 150,
                io_ms: 1000,
                surge: Some(Surge {
                    mib: 600,
                    secs: 20.0,
                    at_secs: 10.0,
                    ramp_secs: 2.0,
                }),
                ..base
            },
            // A burst: about four times what 2 cores transcode per second.
            Self::MixedImages => Settings {
                requests: 400,
                seconds: 4.0,
                ..base
            },
            // Three images to one synthetic job: 2 cores and 2 GiB serve
            // about 24 jobs/s of it (measured, see the README), so 36 a
            // second is 1.5 times that. A refusal is final, so that the
            // load offered stays what it says whatever the server answers.
            Self::Soak => Settings {
                requests: 36 * 1800,
                seconds: 1800.0,
                cpu_ms: 150,
                io_ms: 1000,
                retries: 0,
                warmup_secs: 300.0,
                ..base
            },
        }
    }
}

/// Memory another process in the cgroup takes during the burst.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Surge {
    /// How much, in MiB; every page is touched.
    pub mib: u64,
    /// For how long, in seconds, once taken.
    pub secs: f64,
    /// When it starts, in seconds after the burst starts.
    pub at_secs: f64,
    /// How long it takes to touch its memory, in seconds; 0 at once.
    pub ramp_secs: f64,
}

/// One workload, with every figure resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// Which workload.
    pub workload: Kind,
    /// Requests in the burst.
    pub requests: usize,
    /// Seconds the sends are spread over.
    pub seconds: f64,
    /// MiB per synthetic job.
    pub mib: u64,
    /// CPU time per synthetic job, in ms.
    pub cpu_ms: u64,
    /// Time per synthetic job spent waiting with its memory held, in ms:
    /// the storage I/O of a real job.
    pub io_ms: u64,
    /// Retries of a refusal that carries `Retry-After`.
    pub retries: u32,
    /// Memory taken by another process meanwhile.
    pub surge: Option<Surge>,
    /// Seconds at the start left out of the stability figures (`soak`).
    pub warmup_secs: f64,
    /// Largest image, in megapixels (`mixed-images`).
    pub max_mp: u32,
    /// Seed of the image sizes (`mixed-images`).
    pub seed: u64,
}

impl Settings {
    /// The burst's requests, in order. Images are generated, or read from
    /// `cache`, for `mixed-images` and `soak`.
    ///
    /// # Errors
    ///
    /// When images cannot be generated or cached.
    pub fn jobs(&self, cache: &Path) -> Result<Arc<Vec<Job>>, String> {
        let jobs = match self.workload {
            Kind::Incident | Kind::Surge => vec![self.synthetic(); self.requests],
            Kind::MixedImages => images::draw(self.requests, self.max_mp, self.seed, cache)?
                .into_iter()
                .map(transcode)
                .collect(),
            Kind::Soak => {
                let photos = images::draw(self.requests, self.max_mp, self.seed, cache)?;
                photos
                    .into_iter()
                    .enumerate()
                    .map(|(i, photo)| {
                        if i.is_multiple_of(SOAK_SYNTHETIC_EVERY) {
                            self.synthetic()
                        } else {
                            transcode(photo)
                        }
                    })
                    .collect()
            }
        };
        Ok(Arc::new(jobs))
    }

    fn synthetic(&self) -> Job {
        Job {
            target: format!(
                "/v1/synthetic?mib={}&cpu_ms={}&io_ms={}",
                self.mib, self.cpu_ms, self.io_ms
            ),
            body: None,
            input: format!("{}MiB", self.mib),
        }
    }
}

/// One job in this many of `soak` is synthetic; the rest are images.
const SOAK_SYNTHETIC_EVERY: usize = 4;

fn transcode(photo: images::Photo) -> Job {
    Job {
        target: "/v1/transcode?width=1024&height=1024".to_owned(),
        body: Some((photo.jpeg, "image/jpeg")),
        input: format!("{}MP", photo.megapixels),
    }
}

/// An admission mode to run the server in.
#[derive(Clone, Debug, Serialize)]
pub struct Mode {
    /// As given on the command line: `fixed:12`.
    pub label: String,
    /// The `gate.mode` the server must report in `/v1/admission`.
    pub gate_mode: &'static str,
    /// The server's environment for it.
    pub env: Vec<(String, String)>,
}

impl Mode {
    /// Reads `adaptive`, `fixed:N[:QUEUE]`, `latency[:MAX]` or
    /// `unbounded`.
    ///
    /// # Errors
    ///
    /// When the mode or one of its numbers is not one of those.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.trim().split(':');
        let name = parts.next().unwrap_or_default();
        let numbers = parts
            .map(|n| {
                n.parse::<u64>()
                    .map_err(|e| format!("mode {text}: {n}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (gate_mode, keys): (_, &[&str]) = match name {
            "adaptive" => ("adaptive", &[]),
            "fixed" if !numbers.is_empty() => ("fixed", &["MAX_RUNNING", "MAX_QUEUE"]),
            "latency" => ("latency", &["MAX_RUNNING"]),
            "unbounded" => ("unbounded", &[]),
            _ => {
                return Err(format!(
                    "mode {text}: expected adaptive, fixed:N[:QUEUE], latency[:MAX] or unbounded"
                ));
            }
        };
        if numbers.len() > keys.len() {
            return Err(format!("mode {text}: too many numbers"));
        }
        // The default mode is left to the server's own default, so that a
        // build without `gate.mode` still runs it.
        let mut env = Vec::new();
        if gate_mode != "adaptive" {
            env.push(("MEMGATE__GATE__MODE".to_owned(), gate_mode.to_owned()));
        }
        for (key, n) in keys.iter().zip(&numbers) {
            env.push((format!("MEMGATE__GATE__{key}"), n.to_string()));
        }
        Ok(Self {
            label: text.trim().to_owned(),
            gate_mode,
            env,
        })
    }
}
