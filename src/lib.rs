//! memgate: admission for heavy jobs, sized from measured memory.
//!
//! The layers, each depending only on those above it:
//!
//! - [`memory`]: the signals (jemalloc, cgroup v2/v1, process), one sample
//!   type, and the ceiling the controller steers under.
//! - [`gate`]: a byte-weighted admission gate whose capacity can change at
//!   any time, with a bounded queue and a second limit on running jobs.
//! - [`controller`]: the control law that sizes the gate from memory
//!   samples, learns what jobs really cost, and sizes the running limit
//!   from service times.
//!
//! Beside them, [`config`] loads the configuration and [`telemetry`] sets
//! up the logs; the binary only wires these together.

pub mod config;
pub mod controller;
pub mod gate;
pub mod jobs;
pub mod memory;
pub mod server;
mod size;
pub mod telemetry;

/// The README's Rust examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
