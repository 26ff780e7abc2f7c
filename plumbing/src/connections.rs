//! A bound on connections open at once, in all and from one address: a
//! [`Budget`] of connections. When none is free, a new connection is closed
//! at once instead of being served; each open one holds its slot until it
//! is dropped.

use std::net::IpAddr;

pub use crate::budget::Refused;
use crate::budget::{Budget, Held};

#[derive(Clone)]
pub struct ConnectionSlots {
    budget: Budget,
}

/// A connection's slot; free again when this is dropped.
pub struct Slot(#[allow(dead_code)] Held);

impl ConnectionSlots {
    pub fn new(max: usize, max_per_address: usize) -> Self {
        Self {
            budget: Budget::new(max, max_per_address),
        }
    }

    /// A slot for a connection from `address`.
    pub fn take(&self, address: IpAddr) -> Result<Slot, Refused> {
        self.budget.take(address, 1).map(Slot)
    }

    pub fn max(&self) -> usize {
        self.budget.max()
    }

    pub fn max_per_address(&self) -> usize {
        self.budget.max_per_address()
    }

    pub fn open(&self) -> usize {
        self.budget.spent()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_in_all_and_per_address_and_come_back() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let slots = ConnectionSlots::new(3, 2);
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some(Refused::AddressFull));
        let _third = slots.take(b).unwrap();
        assert_eq!(slots.take(b).err(), Some(Refused::Full));
        assert_eq!(slots.open(), 3);
        drop(first);
        assert_eq!(slots.open(), 2);
        assert!(slots.take(a).is_ok());
    }
}
