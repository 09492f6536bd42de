//! The control law that sizes the gate's capacity from memory samples.
//!
//! The law steers the working set under the ceiling the way a GOMEMLIMIT
//! collector steers the heap, in three parts:
//!
//! 1. **A bound from accounting.** Memory that reservations do not cover
//!    (the process's own code and buffers, other processes in the
//!    container, jobs using more than they reserved) is *unreserved*. Jobs
//!    may reserve what is left under the high watermark:
//!    `bound = high_watermark - unreserved`. With right estimates, the
//!    working set then stays under the high watermark by construction.
//!    The unreserved estimate follows a rise at once and a fall slowly
//!    (`unreserved_decay_ms`), because a reading taken while jobs have not
//!    yet touched all they reserved looks lower than it is.
//!
//! 2. **Pressure, from measurement.** When the working set still rises past
//!    the high watermark (estimates too low, a surge from outside), the
//!    law first asks the allocator to purge freed pages, the reclaim step
//!    a collector would take, and then cuts the capacity to what is
//!    reserved minus `shrink_gain` times the excess: nothing new starts,
//!    and part of what running jobs hold is owed back as they end.
//!
//!    When even that cannot stop it (the working set is past the high
//!    watermark and still rising, as when another process takes memory
//!    faster than running jobs end), the law asks the gate to *shed*
//!    running jobs holding the excess plus one more tick of the rise: a
//!    few jobs refused beat an OOM kill that loses them all.
//!
//! 3. **Hysteresis.** Once engaged, pressure is released only below the
//!    low watermark; until then capacity does not grow. Out of pressure,
//!    capacity follows the bound: down at once, up only while jobs wait
//!    for memory and by at most `grow_step` of the ceiling per tick, so
//!    that each step is measured before the next. Moves smaller than a
//!    deadband are not made.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::ControllerSettings;

/// Moves of the bound smaller than this share of the ceiling are noise (a
/// server buffer, a job between two phases) and do not move the capacity:
/// without it, capacity would follow every wiggle of the unreserved
/// estimate, tick after tick.
const DEADBAND: f64 = 0.01;

/// What the law reads on each tick. Sizes are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// When the sample was taken.
    pub now: Instant,
    /// The working set the law steers by.
    pub working_set: u64,
    /// jemalloc's resident and allocated bytes, when known.
    pub heap: Option<Heap>,
    /// What the gate's reservations hold.
    pub reserved: u64,
    /// The gate's capacity before this tick.
    pub capacity: u64,
    /// Jobs waiting for memory.
    pub waiting_memory: usize,
}

/// The allocator's view of the heap, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heap {
    /// Bytes handed out and not yet freed.
    pub allocated: u64,
    /// Bytes in pages the allocator has mapped: handed out, freed but kept
    /// for reuse, and its own metadata.
    pub resident: u64,
}

/// Why the capacity moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The first sizing, from the first sample.
    Initial,
    /// The working set passed the high watermark.
    Pressure,
    /// Unreserved memory rose, so less is left for jobs.
    UnreservedRose,
    /// Below the bound, out of pressure, with jobs waiting: grow back.
    Recovery,
}

impl Reason {
    /// The reason's name as logs and metrics spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Pressure => "pressure",
            Self::UnreservedRose => "unreserved_rose",
            Self::Recovery => "recovery",
        }
    }
}

/// A pressure state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The working set passed the high watermark.
    Engaged,
    /// The working set fell below the low watermark.
    Released,
}

/// The law's output for one tick. Sizes are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The capacity the gate should have.
    pub capacity: u64,
    /// Why it differs from the input capacity, if it does.
    pub reason: Option<Reason>,
    /// The largest reservation the gate should accept.
    pub max_reservation: u64,
    /// The unreserved memory estimate.
    pub unreserved: u64,
    /// The most the capacity may be now.
    pub bound: u64,
    /// A pressure change on this tick.
    pub transition: Option<Transition>,
    /// Memory running jobs should give up now, in bytes; 0 when none.
    pub shed: u64,
}

/// The law's memory between ticks.
#[derive(Debug)]
pub struct CapacityLaw {
    ceiling: u64,
    high: u64,
    low: u64,
    shrink_gain: f64,
    grow_step: u64,
    deadband: u64,
    decay: Duration,
    purge_interval: Duration,
    unreserved: Option<u64>,
    floor: u64,
    last: Option<Instant>,
    last_purge: Option<Instant>,
    last_working_set: Option<u64>,
    pressure: bool,
}

impl CapacityLaw {
    /// A law steering under `ceiling` bytes.
    pub fn new(settings: &ControllerSettings, ceiling: u64) -> Self {
        let of_ceiling = |fraction: f64| (ceiling as f64 * fraction) as u64;
        Self {
            ceiling,
            high: of_ceiling(settings.high_watermark),
            low: of_ceiling(settings.low_watermark),
            shrink_gain: settings.shrink_gain,
            grow_step: of_ceiling(settings.grow_step).max(1),
            deadband: of_ceiling(DEADBAND),
            decay: Duration::from_millis(settings.unreserved_decay_ms),
            purge_interval: Duration::from_millis(settings.purge_interval_ms),
            unreserved: None,
            floor: u64::MAX,
            last: None,
            last_purge: None,
            last_working_set: None,
            pressure: false,
        }
    }

    /// The ceiling, in bytes.
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// The high watermark, in bytes.
    pub fn high_watermark(&self) -> u64 {
        self.high
    }

    /// The low watermark, in bytes.
    pub fn low_watermark(&self) -> u64 {
        self.low
    }

    /// Whether pressure is engaged.
    pub fn pressure(&self) -> bool {
        self.pressure
    }

    /// Whether the allocator should purge before this tick's decision, and
    /// records the purge when it says yes. It is due at most every
    /// `purge_interval_ms`, and wanted when:
    ///
    /// - the working set is past the high watermark; or
    /// - the working set is past the low watermark and the heap keeps more
    ///   freed pages than the margin between the high watermark and the
    ///   ceiling. Freed pages count as room for new jobs (see
    ///   `track_unreserved`), but a job whose thread cannot reuse them
    ///   grows beside them, and within one tick the working set can then
    ///   pass the ceiling itself. Near the top they are returned instead.
    pub fn wants_purge(&mut self, now: Instant, working_set: u64, heap: Option<Heap>) -> bool {
        let due = self
            .last_purge
            .is_none_or(|at| now.saturating_duration_since(at) >= self.purge_interval);
        let freed = heap.map_or(0, |h| h.resident.saturating_sub(h.allocated));
        let margin = self.ceiling.saturating_sub(self.high);
        let freed_too_many = working_set > self.low && freed > margin;
        let wanted = due && (working_set > self.high || freed_too_many);
        if wanted {
            self.last_purge = Some(now);
        }
        wanted
    }

    /// One tick of the law.
    pub fn step(&mut self, inputs: Inputs) -> Decision {
        let unreserved = self.track_unreserved(&inputs);
        let bound = self.high.saturating_sub(unreserved);
        let transition = self.track_pressure(inputs.working_set);

        let (capacity, reason) = self.capacity(&inputs, bound);
        let moved = capacity != inputs.capacity || self.last.is_none();
        let shed = self.shed(inputs.working_set);
        self.last = Some(inputs.now);
        self.last_working_set = Some(inputs.working_set);

        Decision {
            capacity,
            reason: moved.then_some(reason),
            max_reservation: self.high.saturating_sub(self.floor),
            unreserved,
            bound,
            transition,
            shed,
        }
    }

    /// Memory to shed: above the high watermark and still rising, the
    /// excess and one more tick of the rise, since a cut only stops new
    /// jobs and the rise may outpace the running ones' ends. The gate
    /// counts what jobs shed earlier still hold against it.
    fn shed(&self, working_set: u64) -> u64 {
        let Some(previous) = self.last_working_set else {
            return 0;
        };
        if working_set <= self.high || working_set <= previous {
            return 0;
        }
        (working_set - self.high) + (working_set - previous)
    }

    /// The new capacity and why.
    fn capacity(&self, inputs: &Inputs, bound: u64) -> (u64, Reason) {
        // The first sample sizes the gate outright.
        if self.last.is_none() {
            return (bound, Reason::Initial);
        }

        // Past the high watermark: cut below what is held, in proportion
        // to the excess.
        if inputs.working_set > self.high {
            let excess = (inputs.working_set - self.high) as f64 * self.shrink_gain;
            let held = inputs.capacity.min(inputs.reserved);
            let cut = held.saturating_sub(excess as u64).min(bound);
            return (cut.min(inputs.capacity), Reason::Pressure);
        }

        // Unreserved memory rose past what the capacity allowed for.
        if inputs.capacity > bound.saturating_add(self.deadband) {
            return (bound, Reason::UnreservedRose);
        }

        // Below the bound, out of pressure, with jobs that want memory:
        // grow back a step at a time, so that each step is measured before
        // the next is taken.
        let gap = bound.saturating_sub(inputs.capacity);
        if !self.pressure && inputs.waiting_memory > 0 && gap > self.deadband {
            let grown = inputs.capacity.saturating_add(self.grow_step).min(bound);
            return (grown, Reason::Recovery);
        }

        (inputs.capacity, Reason::Recovery)
    }

    /// Updates the unreserved estimate and returns it.
    ///
    /// Unreserved memory is the working set minus what reservations cover.
    /// With heap statistics, a reservation covers the heap's pages in use
    /// and those it keeps for reuse: a job that has not yet touched all it
    /// reserved does not make the rest of the working set look smaller,
    /// and freed pages are room a new job grows into (when it cannot,
    /// because its thread uses another arena, the working set rises past
    /// the high watermark and a purge returns them). Without heap
    /// statistics the whole reservation counts, and the estimate dips
    /// while jobs start; its slow fall covers that.
    fn track_unreserved(&mut self, inputs: &Inputs) -> u64 {
        let measured = match inputs.heap {
            Some(heap) => {
                let outside_heap = inputs.working_set.saturating_sub(heap.resident);
                outside_heap + heap.allocated.saturating_sub(inputs.reserved)
            }
            None => inputs.working_set.saturating_sub(inputs.reserved),
        };

        let estimate = match (self.unreserved, self.last) {
            (Some(old), Some(last)) if measured < old => {
                let elapsed = inputs.now.saturating_duration_since(last);
                let share = if self.decay.is_zero() {
                    1.0
                } else {
                    (elapsed.as_secs_f64() / self.decay.as_secs_f64()).min(1.0)
                };
                old - ((old - measured) as f64 * share) as u64
            }
            _ => measured,
        };

        self.unreserved = Some(estimate);
        self.floor = self.floor.min(estimate);
        estimate
    }

    /// Engages pressure above the high watermark and releases it below the
    /// low one.
    fn track_pressure(&mut self, working_set: u64) -> Option<Transition> {
        if !self.pressure && working_set > self.high {
            self.pressure = true;
            return Some(Transition::Engaged);
        }
        if self.pressure && working_set < self.low {
            self.pressure = false;
            return Some(Transition::Released);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A law under a 1000 MiB ceiling, high watermark 950 MiB, low 850.
    fn law() -> CapacityLaw {
        let settings = ControllerSettings {
            high_watermark: 0.95,
            low_watermark: 0.85,
            ..ControllerSettings::default()
        };
        CapacityLaw::new(&settings, 1000 * MIB)
    }

    fn inputs(now: Instant, working_set: u64, reserved: u64, capacity: u64) -> Inputs {
        Inputs {
            now,
            working_set,
            heap: None,
            reserved,
            capacity,
            waiting_memory: 1,
        }
    }

    #[test]
    fn first_sample_sizes_capacity_to_the_room_under_the_high_watermark() {
        let mut law = law();
        let d = law.step(inputs(Instant::now(), 100 * MIB, 0, 0));
        assert_eq!(d.capacity, 950 * MIB - 100 * MIB);
        assert_eq!(d.reason, Some(Reason::Initial));
    }

    #[test]
    fn excess_over_the_high_watermark_cuts_below_what_is_reserved() {
        let mut law = law();
        let t = Instant::now();
        law.step(inputs(t, 100 * MIB, 0, 0));
        let d = law.step(inputs(t, 990 * MIB, 800 * MIB, 850 * MIB));
        assert_eq!(d.capacity, 800 * MIB - 40 * MIB);
        assert_eq!(d.reason, Some(Reason::Pressure));
        assert_eq!(d.transition, Some(Transition::Engaged));
    }

    #[test]
    fn pressure_transitions_are_reported_once_each() {
        let mut law = law();
        let t = Instant::now();
        law.step(inputs(t, 100 * MIB, 0, 0));

        let over = |law: &mut CapacityLaw| law.step(inputs(t, 990 * MIB, 800 * MIB, 800 * MIB));
        assert_eq!(over(&mut law).transition, Some(Transition::Engaged));
        assert_eq!(over(&mut law).transition, None);

        let under = |law: &mut CapacityLaw| law.step(inputs(t, 500 * MIB, 400 * MIB, 400 * MIB));
        assert_eq!(under(&mut law).transition, Some(Transition::Released));
        assert_eq!(under(&mut law).transition, None);
    }

    #[test]
    fn between_the_watermarks_capacity_holds() {
        let mut law = law();
        let t = Instant::now();
        law.step(inputs(t, 100 * MIB, 0, 0));
        law.step(inputs(t, 990 * MIB, 800 * MIB, 850 * MIB));
        let d = law.step(inputs(t, 900 * MIB, 760 * MIB, 760 * MIB));
        assert_eq!(d.capacity, 760 * MIB);
        assert_eq!(d.reason, None);
    }

    #[test]
    fn out_of_pressure_capacity_grows_one_step_per_tick_while_jobs_wait() {
        let mut law = law();
        let t = Instant::now();
        law.step(inputs(t, 100 * MIB, 0, 0));
        let d = law.step(inputs(t, 300 * MIB, 200 * MIB, 200 * MIB));
        assert_eq!(d.capacity, 250 * MIB);
        assert_eq!(d.reason, Some(Reason::Recovery));

        let idle = Inputs {
            waiting_memory: 0,
            ..inputs(t, 300 * MIB, 200 * MIB, 250 * MIB)
        };
        assert_eq!(law.step(idle).reason, None, "nobody waits: hold");
    }

    #[test]
    fn under_pressure_capacity_does_not_grow_until_the_low_watermark() {
        let mut law = law();
        let t = Instant::now();
        law.step(inputs(t, 100 * MIB, 0, 0));
        law.step(inputs(t, 990 * MIB, 800 * MIB, 850 * MIB));

        let d = law.step(inputs(t, 900 * MIB, 500 * MIB, 500 * MIB));
        assert_eq!(d.capacity, 500 * MIB, "still under pressure");

        let d = law.step(inputs(t, 800 * MIB, 500 * MIB, 500 * MIB));
        assert_eq!(d.transition, Some(Transition::Released));
        assert_eq!(d.capacity, 550 * MIB);
    }

    #[test]
    fn a_rise_in_unreserved_memory_lowers_the_bound_at_once() {
        let mut law = law();
        let t = Instant::now();
        law.step(inputs(t, 100 * MIB, 0, 0));
        let d = law.step(inputs(t, 700 * MIB, 0, 850 * MIB));
        assert_eq!(d.capacity, 250 * MIB);
        assert_eq!(d.reason, Some(Reason::UnreservedRose));
    }

    #[test]
    fn unreserved_memory_falls_slowly() {
        let mut law = law();
        let t = Instant::now();
        law.step(inputs(t, 600 * MIB, 0, 0));
        // A quarter of the decay time closes a quarter of the gap.
        let later = t + Duration::from_millis(500);
        let d = law.step(inputs(later, 100 * MIB, 0, 350 * MIB));
        assert_eq!(d.unreserved, 475 * MIB);
    }

    #[test]
    fn heap_statistics_see_through_untouched_reservations() {
        let mut law = law();
        let t = Instant::now();
        let idle = Inputs {
            heap: Some(Heap {
                allocated: 10 * MIB,
                resident: 20 * MIB,
            }),
            ..inputs(t, 100 * MIB, 0, 0)
        };
        assert_eq!(law.step(idle).unreserved, 90 * MIB);

        // 500 MiB reserved, 100 MiB of it touched so far: the estimate
        // does not dip to zero.
        let busy = Inputs {
            heap: Some(Heap {
                allocated: 110 * MIB,
                resident: 120 * MIB,
            }),
            ..inputs(t + Duration::from_secs(10), 200 * MIB, 500 * MIB, 850 * MIB)
        };
        assert_eq!(law.step(busy).unreserved, 80 * MIB);
    }

    #[test]
    fn purge_is_asked_at_most_once_per_interval() {
        let mut law = law();
        let t = Instant::now();
        assert!(!law.wants_purge(t, 900 * MIB, None));
        assert!(law.wants_purge(t, 990 * MIB, None));
        assert!(!law.wants_purge(t + Duration::from_millis(10), 990 * MIB, None));
        assert!(law.wants_purge(t + Duration::from_secs(1), 990 * MIB, None));
    }

    #[test]
    fn freed_pages_past_the_margin_are_purged_near_the_top_only() {
        // Ceiling 1000 MiB, high 950, low 850: the margin is 50 MiB.
        let heap = |freed: u64| {
            Some(Heap {
                allocated: 700 * MIB,
                resident: 700 * MIB + freed,
            })
        };
        let second = Duration::from_secs(1);
        let mut law = law();
        let t = Instant::now();
        assert!(!law.wants_purge(t, 800 * MIB, heap(200 * MIB)), "low down");
        assert!(
            !law.wants_purge(t, 900 * MIB, heap(40 * MIB)),
            "within margin"
        );
        assert!(law.wants_purge(t, 900 * MIB, heap(60 * MIB)), "past margin");
        assert!(law.wants_purge(t + second, 960 * MIB, heap(0)), "past high");
    }

    #[test]
    fn a_working_set_still_rising_past_the_high_watermark_asks_for_a_shed() {
        let mut law = law();
        let t = Instant::now();
        law.step(inputs(t, 940 * MIB, 800 * MIB, 850 * MIB));

        let rising = law.step(inputs(t, 970 * MIB, 800 * MIB, 850 * MIB));
        // 20 MiB past the 950 MiB watermark, and 30 MiB more by the next
        // tick at the same rise.
        assert_eq!(rising.shed, 50 * MIB);

        let falling = law.step(inputs(t, 960 * MIB, 800 * MIB, 700 * MIB));
        assert_eq!(falling.shed, 0, "a falling working set needs no shed");
    }

    #[test]
    fn a_rise_under_the_high_watermark_sheds_nothing() {
        let mut law = law();
        let t = Instant::now();
        law.step(inputs(t, 800 * MIB, 700 * MIB, 850 * MIB));
        let d = law.step(inputs(t, 940 * MIB, 800 * MIB, 850 * MIB));
        assert_eq!(d.shed, 0);
    }
}
