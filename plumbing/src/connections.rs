//! A bound on connections open at once. Each accepted connection holds a
//! slot until it is dropped; when none is free, a new connection is closed
//! at once instead of being served.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
}

/// A connection's slot; the slot is free again when this is dropped.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionSlots {
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
            max: max.max(1),
        }
    }

    /// A slot, or `None` when `max` connections are open.
    pub fn take(&self) -> Option<Slot> {
        self.slots.clone().try_acquire_owned().ok().map(Slot)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = ConnectionSlots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none());
        assert_eq!(slots.open(), 2);
        drop(a);
        assert!(slots.take().is_some());
    }
}
