//! Asynchronous jobs: their status, and their results for a while.
//!
//! A result keeps the reservation of the job that made it, shrunk to the
//! result's size, so that the memory results hold counts against the gate.
//! Results are kept at most `server.result_ttl_ms` and at most
//! `server.max_results` in total, oldest evicted first; finished jobs'
//! statuses are kept as long as results are.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::gate::Reservation;

/// Where an asynchronous job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Admitted, waiting for a run slot.
    Queued,
    /// Working.
    Running,
    /// Finished; the result can be fetched.
    Done,
    /// Failed; `reason` says why.
    Failed,
    /// Cancelled before it ran (the server drains); `reason` says why.
    Cancelled,
}

/// A job's status as `GET /v1/jobs/{id}` answers it.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    /// The job's id.
    pub id: String,
    /// Where it is.
    pub status: Status,
    /// Why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The HTTP status its synchronous twin would have answered, for a
    /// failed job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_status: Option<u16>,
    /// Size of the result in bytes, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_bytes: Option<usize>,
}

/// A finished job's output.
#[derive(Clone, Debug)]
pub struct Output {
    /// The bytes.
    pub data: Bytes,
    /// Their media type.
    pub content_type: &'static str,
}

#[derive(Debug)]
struct Entry {
    status: Status,
    reason: Option<String>,
    error_status: Option<u16>,
    result: Option<(Output, Reservation)>,
    finished: Option<Instant>,
}

#[derive(Debug, Default)]
struct Books {
    jobs: HashMap<Uuid, Entry>,
    /// Finished jobs, oldest first, for expiry and eviction.
    finished: VecDeque<Uuid>,
    result_bytes: u64,
}

/// The store of asynchronous jobs.
#[derive(Debug)]
pub struct Store {
    ttl: Duration,
    max_result_bytes: u64,
    max_jobs: usize,
    books: Mutex<Books>,
}

impl Store {
    /// A store keeping results for `ttl`, at most `max_result_bytes` of
    /// them, and at most `max_jobs` jobs in all.
    pub fn new(ttl: Duration, max_result_bytes: u64, max_jobs: usize) -> Self {
        Self {
            ttl,
            max_result_bytes,
            max_jobs,
            books: Mutex::default(),
        }
    }

    /// Registers a queued job and returns its id, or `None` when the store
    /// holds `max_jobs` jobs that have not finished.
    pub fn insert(&self) -> Option<Uuid> {
        let mut books = self.books();
        if books.jobs.len() >= self.max_jobs {
            // Make room from finished jobs, oldest first.
            let oldest = books.finished.pop_front()?;
            books.remove(&oldest);
        }
        let id = Uuid::new_v4();
        books.jobs.insert(
            id,
            Entry {
                status: Status::Queued,
                reason: None,
                error_status: None,
                result: None,
                finished: None,
            },
        );
        Some(id)
    }

    /// Marks a job as running.
    pub fn running(&self, id: Uuid) {
        if let Some(entry) = self.books().jobs.get_mut(&id) {
            entry.status = Status::Running;
        }
    }

    /// Stores a job's result with the reservation that covers it.
    pub fn done(&self, id: Uuid, output: Output, reservation: Reservation) {
        let mut books = self.books();
        books.result_bytes += reservation.bytes();
        books.finish(id, Status::Done, None, None);
        if let Some(entry) = books.jobs.get_mut(&id) {
            entry.result = Some((output, reservation));
        }
        books.evict_over(self.max_result_bytes);
    }

    /// Marks a job as failed or cancelled, with the reason.
    pub fn failed(&self, id: Uuid, status: Status, reason: String, error_status: Option<u16>) {
        self.books().finish(id, status, Some(reason), error_status);
    }

    /// The job's status, if the store still knows it.
    pub fn view(&self, id: Uuid) -> Option<JobView> {
        let books = self.books();
        let entry = books.jobs.get(&id)?;
        Some(JobView {
            id: id.to_string(),
            status: entry.status,
            reason: entry.reason.clone(),
            error_status: entry.error_status,
            result_bytes: entry.result.as_ref().map(|(output, _)| output.data.len()),
        })
    }

    /// The job's result, if it is done and still kept.
    pub fn result(&self, id: Uuid) -> Option<Output> {
        let books = self.books();
        let (output, _) = books.jobs.get(&id)?.result.as_ref()?;
        Some(output.clone())
    }

    /// Forgets finished jobs older than the time to live, returning their
    /// results' memory to the gate.
    pub fn expire(&self, now: Instant) {
        let mut books = self.books();
        while let Some(&oldest) = books.finished.front() {
            let finished = books.jobs.get(&oldest).and_then(|entry| entry.finished);
            match finished {
                Some(at) if now.saturating_duration_since(at) < self.ttl => break,
                _ => {
                    books.finished.pop_front();
                    books.remove(&oldest);
                }
            }
        }
    }

    /// Ids of jobs that have not finished.
    pub fn unfinished(&self) -> Vec<Uuid> {
        let books = self.books();
        books
            .jobs
            .iter()
            .filter(|(_, entry)| entry.finished.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        // Plain maps: still consistent after a panic elsewhere.
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Books {
    fn finish(&mut self, id: Uuid, status: Status, reason: Option<String>, error: Option<u16>) {
        let Some(entry) = self.jobs.get_mut(&id) else {
            return;
        };
        entry.status = status;
        entry.reason = reason;
        entry.error_status = error;
        entry.finished = Some(Instant::now());
        self.finished.push_back(id);
    }

    fn remove(&mut self, id: &Uuid) {
        if let Some(Entry {
            result: Some((_, reservation)),
            ..
        }) = self.jobs.remove(id)
        {
            self.result_bytes -= reservation.bytes();
        }
    }

    /// Evicts the oldest results until they fit in `max` bytes.
    fn evict_over(&mut self, max: u64) {
        while self.result_bytes > max {
            let Some(oldest) = self.finished.pop_front() else {
                return;
            };
            self.remove(&oldest);
        }
    }
}
