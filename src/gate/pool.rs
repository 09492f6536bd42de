//! A semaphore whose size can change at any time, also below what is held.
//!
//! tokio's [`Semaphore`] can grow (`add_permits`) but can only shrink by the
//! permits that are free at that instant (`forget_permits`). When the
//! controller lowers the capacity below what running jobs already hold, the
//! difference is recorded as *owed*: permits that come back are forgotten
//! instead of returned until the debt is paid. Raising the capacity again
//! cancels debt before it adds permits.
//!
//! Holders never own a tokio permit guard: [`Pool::acquire`] forgets the
//! guard at once and the caller returns the count with [`Pool::release`],
//! which is what lets a return pay debt first.

use std::sync::Mutex;

use tokio::sync::{AcquireError, Semaphore, TryAcquireError};

/// A counted resource with a movable capacity.
#[derive(Debug)]
pub(crate) struct Pool {
    semaphore: Semaphore,
    /// Capacity, debt and holdings change together under this lock; the
    /// semaphore's own counter is only touched while it is held, except by
    /// acquirers, which can only lower it.
    books: Mutex<Books>,
}

/// The pool's accounts, in units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Books {
    /// What the pool may hand out in total.
    pub capacity: u64,
    /// Held units that must be forgotten, not returned, when they come back.
    pub owed: u64,
    /// Units currently held.
    pub held: u64,
}

impl Books {
    #[cfg(test)]
    /// Units free to acquire right now.
    pub fn available(&self) -> u64 {
        (self.capacity + self.owed).saturating_sub(self.held)
    }
}

/// Why a pool could not hand out units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PoolError {
    /// The pool was closed: nothing more is handed out.
    Closed,
    /// Not enough free units right now (only from `try_acquire`).
    Busy,
}

impl Pool {
    /// A pool with `capacity` free units.
    pub fn new(capacity: u64) -> Self {
        Self {
            semaphore: Semaphore::new(to_usize(capacity)),
            books: Mutex::new(Books {
                capacity,
                ..Books::default()
            }),
        }
    }

    /// Takes `units` if they are free now, without waiting.
    pub fn try_acquire(&self, units: u32) -> Result<(), PoolError> {
        match self.semaphore.try_acquire_many(units) {
            Ok(permit) => {
                permit.forget();
                self.books().held += u64::from(units);
                Ok(())
            }
            Err(TryAcquireError::Closed) => Err(PoolError::Closed),
            Err(TryAcquireError::NoPermits) => Err(PoolError::Busy),
        }
    }

    /// Waits for `units`, in FIFO order with every other waiter.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes acquires nothing: tokio hands
    /// back any units already assigned to the waiter.
    pub async fn acquire(&self, units: u32) -> Result<(), PoolError> {
        let permit = self
            .semaphore
            .acquire_many(units)
            .await
            .map_err(|_: AcquireError| PoolError::Closed)?;

        // No await between the permit and the books: a cancelled caller
        // either holds nothing or holds units that are on the books.
        permit.forget();
        self.books().held += u64::from(units);
        Ok(())
    }

    /// Gives back `units` that were acquired, paying debt first.
    pub fn release(&self, units: u64) {
        if units == 0 {
            return;
        }
        let mut books = self.books();
        debug_assert!(books.held >= units, "released more than was held");
        books.held = books.held.saturating_sub(units);

        let paid = units.min(books.owed);
        books.owed -= paid;
        self.semaphore.add_permits(to_usize(units - paid));
    }

    /// Moves the capacity to `capacity`, owing what cannot be taken back.
    pub fn resize(&self, capacity: u64) {
        let mut books = self.books();
        if capacity > books.capacity {
            let raise = capacity - books.capacity;
            let cancelled = raise.min(books.owed);
            books.owed -= cancelled;
            self.semaphore.add_permits(to_usize(raise - cancelled));
        } else {
            let cut = books.capacity - capacity;
            let forgotten = self.semaphore.forget_permits(to_usize(cut)) as u64;
            books.owed += cut - forgotten;
        }
        books.capacity = capacity;
    }

    /// Refuses every waiter and every later acquire.
    pub fn close(&self) {
        self.semaphore.close();
    }

    /// A consistent copy of the accounts.
    pub fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        // A panic while the lock is held can only come from a bug in this
        // file's arithmetic; the books are still the best record there is.
        self.books
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A copy of the accounts at one instant.
    pub fn snapshot(&self) -> Books {
        *self.books()
    }
}

/// Pool sizes are bounded by the gate far below `usize::MAX` on every
/// platform memgate builds for; saturate rather than wrap if one is not.
fn to_usize(units: u64) -> usize {
    usize::try_from(units)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_below_held_is_owed_and_paid_by_releases() {
        let pool = Pool::new(100);
        pool.try_acquire(80).unwrap();

        pool.resize(50);
        assert_eq!(pool.snapshot().owed, 30);
        assert_eq!(pool.snapshot().available(), 0);

        pool.release(40);
        assert_eq!(pool.snapshot().owed, 0);
        assert_eq!(pool.snapshot().available(), 10);
    }

    #[test]
    fn raise_cancels_debt_before_adding_units() {
        let pool = Pool::new(100);
        pool.try_acquire(100).unwrap();
        pool.resize(40);
        assert_eq!(pool.snapshot().owed, 60);

        pool.resize(70);
        assert_eq!(pool.snapshot().owed, 30);
        assert_eq!(pool.try_acquire(1), Err(PoolError::Busy));

        pool.release(100);
        assert_eq!(
            pool.snapshot(),
            Books {
                capacity: 70,
                owed: 0,
                held: 0
            }
        );
        assert!(pool.try_acquire(70).is_ok());
    }

    #[test]
    fn closed_pool_refuses_but_takes_returns() {
        let pool = Pool::new(10);
        pool.try_acquire(4).unwrap();
        pool.close();
        assert_eq!(pool.try_acquire(1), Err(PoolError::Closed));
        pool.release(4);
        assert_eq!(pool.snapshot().held, 0);
    }
}
