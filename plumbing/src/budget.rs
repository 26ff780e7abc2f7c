//! A budget shared by all clients, of which one client address may hold
//! only a part: connections open, bytes of request bodies buffered. Taking
//! never waits: a client that finds the budget spent is refused at once
//! (it gets an answer instead of a queue behind someone else's stalled
//! request), and what it held comes back when its [`Held`] is dropped.
//!
//! The per-address part keeps one client (a pod that opens connections and
//! never finishes its requests) from spending the whole budget: the
//! apiserver, which connects from its own address, still finds room.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    max: usize,
    max_per_address: usize,
    spent: Mutex<Spent>,
}

#[derive(Default)]
struct Spent {
    total: usize,
    /// foldhash, randomly seeded per map: every review takes and gives
    /// back here, and callgrind put about 550 user-space instructions of
    /// an ImageReview's 39,000 in SipHash's three hashes of the address
    /// (take, grow, give back).
    /// Only addresses holding an open connection or a body being read
    /// are in it, so the map is bounded by the connections allowed.
    by_address: HashMap<IpAddr, usize, foldhash::fast::RandomState>,
}

/// Why an amount could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The whole budget is spent.
    Full,
    /// This address holds its part already.
    AddressFull,
}

/// An amount taken from the budget by one address; given back on drop.
pub struct Held {
    inner: Arc<Inner>,
    address: IpAddr,
    amount: usize,
}

impl Budget {
    /// `max` in all, of which `max_per_address` (at most `max`) by one
    /// address.
    pub fn new(max: usize, max_per_address: usize) -> Self {
        let max = max.max(1);
        Self {
            inner: Arc::new(Inner {
                max,
                max_per_address: max_per_address.clamp(1, max),
                spent: Mutex::new(Spent::default()),
            }),
        }
    }

    /// Takes `amount` for `address`.
    pub fn take(&self, address: IpAddr, amount: usize) -> Result<Held, Refused> {
        let mut held = self.hold_nothing(address);
        held.grow(amount)?;
        Ok(held)
    }

    /// An empty holding for `address`, to [`Held::grow`] as needed.
    pub fn hold_nothing(&self, address: IpAddr) -> Held {
        Held {
            inner: self.inner.clone(),
            address,
            amount: 0,
        }
    }

    pub fn max(&self) -> usize {
        self.inner.max
    }

    pub fn max_per_address(&self) -> usize {
        self.inner.max_per_address
    }

    /// What all addresses hold now.
    pub fn spent(&self) -> usize {
        self.inner.lock().total
    }
}

impl Held {
    /// Takes `more` for the same address; on refusal what is held stays.
    pub fn grow(&mut self, more: usize) -> Result<(), Refused> {
        let mut spent = self.inner.lock();
        if spent.total + more > self.inner.max {
            return Err(Refused::Full);
        }
        let by_address = spent.by_address.entry(self.address).or_default();
        if *by_address + more > self.inner.max_per_address {
            if *by_address == 0 {
                spent.by_address.remove(&self.address);
            }
            return Err(Refused::AddressFull);
        }
        *by_address += more;
        spent.total += more;
        self.amount += more;
        Ok(())
    }

    pub fn amount(&self) -> usize {
        self.amount
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Spent> {
        // The counts stay consistent even if a holder panicked: each change
        // is made whole under the lock.
        self.spent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.amount == 0 {
            return;
        }
        let mut spent = self.inner.lock();
        spent.total -= self.amount;
        if let Some(by_address) = spent.by_address.get_mut(&self.address) {
            *by_address -= self.amount;
            if *by_address == 0 {
                // The map holds only addresses that hold something.
                spent.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn one_address_holds_its_part_and_all_hold_at_most_the_whole() {
        let budget = Budget::new(10, 6);
        let mut a = budget.take(A, 4).unwrap();
        assert_eq!(a.grow(3).err(), Some(Refused::AddressFull));
        assert_eq!(a.amount(), 4, "a refused grow keeps what was held");
        a.grow(2).unwrap();
        let b = budget.take(B, 4).unwrap();
        assert_eq!(budget.take(B, 1).err(), Some(Refused::Full));
        assert_eq!(budget.spent(), 10);
        drop(a);
        assert_eq!(budget.spent(), 4);
        assert!(budget.take(A, 6).is_ok());
        drop(b);
        assert_eq!(budget.spent(), 0);
    }

    #[test]
    fn addresses_holding_nothing_are_forgotten() {
        let budget = Budget::new(10, 1);
        for i in 0..=255u8 {
            let address = IpAddr::from([10, 0, 1, i]);
            drop(budget.take(address, 1).unwrap());
            assert_eq!(budget.take(address, 2).err(), Some(Refused::AddressFull));
        }
        assert!(budget.inner.lock().by_address.is_empty());
    }
}
