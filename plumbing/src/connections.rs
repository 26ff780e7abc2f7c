//! A bound on connections open at once, in all and from one address: a
//! [`Budget`] of connections. When none is free, a new connection is closed
//! at once instead of being served; each open one holds its slot until it
//! is dropped.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

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

    /// The next connection on `listener` that gets a slot. Connections over
    /// a bound are closed at once (each open one costs memory); a failed
    /// accept (out of file descriptors and the like) is logged and retried
    /// after a pause. Cancel-safe, so it can race a shutdown in `select!`.
    /// `listener_name` names the listener in the logs.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        listener_name: &str,
    ) -> (TcpStream, SocketAddr, Slot) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, listener = listener_name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.take(peer.ip()) {
                Ok(slot) => return (tcp, peer, slot),
                Err(why) => {
                    let max = match why {
                        Refused::Full => self.max(),
                        Refused::AddressFull => self.max_per_address(),
                    };
                    debug!(%peer, listener = listener_name, ?why, max, "connection refused: at its bound");
                }
            }
        }
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
