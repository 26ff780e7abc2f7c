//! Which agents follow this replica's approval feed, and from where: the
//! node name each stream gives and the address it connected from. The
//! reporter reaches each agent's API there, so it needs no list of nodes
//! from DNS or the apiserver.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

pub type Agents = BTreeMap<String, IpAddr>;

#[derive(Clone, Debug)]
pub struct Followers {
    agents: watch::Sender<Agents>,
    /// Streams open per node (two while an agent replaces a broken one).
    streams: Arc<Mutex<HashMap<String, (IpAddr, usize)>>>,
}

impl Default for Followers {
    fn default() -> Self {
        Self {
            agents: watch::channel(Agents::new()).0,
            streams: Arc::default(),
        }
    }
}

/// Held while a stream is open; leaving drops it.
pub struct Following {
    followers: Followers,
    node: String,
}

impl Followers {
    /// The agents following now, and every change.
    pub fn subscribe(&self) -> watch::Receiver<Agents> {
        self.agents.subscribe()
    }

    /// A stream of `node` opened from `ip`.
    pub fn joined(&self, node: &str, ip: IpAddr) -> Following {
        {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            let entry = streams.entry(node.to_string()).or_insert((ip, 0));
            // The newest stream's address: an agent that moved comes from
            // its new one.
            *entry = (ip, entry.1 + 1);
            // One entry changed, and only it is written: rebuilding the
            // whole list on every join made a reconnect storm quadratic
            // (after a restart at 5,000 agents, 21% of the feed thread's
            // samples were re-sorting the list; `perf` on `push_scale`).
            self.agents
                .send_if_modified(|agents| match agents.get_mut(node) {
                    Some(listed) if *listed == ip => false,
                    Some(listed) => {
                        *listed = ip;
                        true
                    }
                    None => {
                        agents.insert(node.to_string(), ip);
                        true
                    }
                });
        }
        Following {
            followers: self.clone(),
            node: node.to_string(),
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut streams = self
            .followers
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some((_, open)) = streams.get_mut(&self.node) else {
            return;
        };
        *open -= 1;
        if *open == 0 {
            streams.remove(&self.node);
            self.followers
                .agents
                .send_if_modified(|agents| agents.remove(&self.node).is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_is_listed_while_any_of_its_streams_is_open() {
        let followers = Followers::default();
        let seen = followers.subscribe();
        let ip = |n| IpAddr::from([10, 0, 0, n]);
        let first = followers.joined("node-a", ip(1));
        let replacement = followers.joined("node-a", ip(2));
        let other = followers.joined("node-b", ip(3));
        assert_eq!(
            *seen.borrow(),
            Agents::from([("node-a".into(), ip(2)), ("node-b".into(), ip(3))])
        );
        drop(first);
        assert_eq!(
            seen.borrow().get("node-a"),
            Some(&ip(2)),
            "one stream still open"
        );
        drop(replacement);
        drop(other);
        assert!(seen.borrow().is_empty());
    }

    #[test]
    fn subscribers_wake_only_when_the_list_changes() {
        let followers = Followers::default();
        let mut seen = followers.subscribe();
        let ip = IpAddr::from([10, 0, 0, 1]);
        let first = followers.joined("node-a", ip);
        assert!(seen.has_changed().unwrap(), "a new agent is a change");
        seen.borrow_and_update();
        let second = followers.joined("node-a", ip);
        assert!(!seen.has_changed().unwrap(), "same node, same address");
        drop(first);
        assert!(!seen.has_changed().unwrap(), "still listed");
        let moved = followers.joined("node-a", IpAddr::from([10, 0, 0, 9]));
        assert!(seen.has_changed().unwrap(), "a new address is a change");
        seen.borrow_and_update();
        drop(second);
        drop(moved);
        assert!(seen.has_changed().unwrap());
        assert!(seen.borrow_and_update().is_empty());
    }
}
