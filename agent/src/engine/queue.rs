//! Which identifications wait and which run. Every cgroup the kernel
//! reports may need a runtime lookup, and anyone with a writable cgroup
//! subtree can create tens of thousands a second: one task each (as
//! before this queue) got the agent OOM-killed. So at most `max_running`
//! run at once, at most `capacity` wait in each lane, a cgroup is queued
//! once however many events name it, and what does not fit is dropped and
//! counted (the runner then re-scans the runtime's running containers, so
//! a real container whose events were dropped is still found).
//!
//! Two lanes: `Urgent` for cgroups where something runs (an exec, a
//! container the runtime listed), `Speculative` for cgroups that were only
//! created (most of a burst: empty, often gone already). Urgent requests
//! are served first, and an exec in a cgroup that waits in the speculative
//! lane moves it to the urgent one.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Instant,
};

/// Where an identification waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Urgent,
    Speculative,
}

/// What to identify, and from what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// From an exec's process (`pid`) or a new cgroup's path.
    Cgroup {
        pid: Option<u32>,
        path: Option<String>,
    },
    /// A container the runtime listed as running.
    Running {
        path: String,
        namespace: String,
        id: String,
    },
}

/// One identification to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub key: u64,
    pub subject: Subject,
    /// When the machine first saw the cgroup (identification latency and
    /// the grace window count from here, not from when a slot was free).
    pub first_event: Instant,
    pub first_seen_ms: u64,
}

/// What [`Queue::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Already waiting or running: nothing added (an exec may have moved a
    /// speculative one to the urgent lane).
    Coalesced,
    /// The lane was full: the request is dropped.
    Dropped,
}

pub struct Queue {
    max_running: usize,
    capacity: usize,
    running: HashSet<u64>,
    /// Waiting requests, by key, with the lane each now waits in.
    waiting: HashMap<u64, (Lane, Request)>,
    /// Keys in arrival order per lane; a key moved to the urgent lane
    /// leaves a stale entry in the speculative one, skipped when reached.
    urgent: VecDeque<u64>,
    speculative: VecDeque<u64>,
    /// Live (not stale) entries per lane.
    counts: [usize; 2],
}

impl Queue {
    pub fn new(max_running: usize, capacity: usize) -> Self {
        Self {
            max_running: max_running.max(1),
            capacity: capacity.max(1),
            running: HashSet::new(),
            waiting: HashMap::new(),
            urgent: VecDeque::new(),
            speculative: VecDeque::new(),
            counts: [0, 0],
        }
    }

    /// Queues `request` in `lane`, unless its cgroup is already waiting or
    /// running, or the lane is full.
    pub fn push(&mut self, request: Request, lane: Lane) -> Pushed {
        let key = request.key;
        if self.running.contains(&key) {
            return Pushed::Coalesced;
        }
        if let Some((waits_in, _)) = self.waiting.get(&key) {
            if *waits_in == Lane::Speculative && lane == Lane::Urgent {
                self.hurry(key);
            }
            return Pushed::Coalesced;
        }
        if self.counts[index(lane)] >= self.capacity {
            return Pushed::Dropped;
        }
        self.lane_mut(lane).push_back(key);
        self.counts[index(lane)] += 1;
        self.waiting.insert(key, (lane, request));
        Pushed::Queued
    }

    /// Moves a waiting speculative request to the urgent lane (something
    /// runs in its cgroup now). Over the urgent lane's capacity it stays
    /// where it is: it is still waiting, just not ahead.
    pub fn hurry(&mut self, key: u64) {
        let Some((lane, _)) = self.waiting.get_mut(&key) else {
            return;
        };
        if *lane != Lane::Speculative || self.counts[index(Lane::Urgent)] >= self.capacity {
            return;
        }
        *lane = Lane::Urgent;
        self.counts[index(Lane::Speculative)] -= 1;
        self.counts[index(Lane::Urgent)] += 1;
        self.urgent.push_back(key);
        // The entry left behind is stale; while the speculative lane is
        // not served (urgent work keeps coming) they would pile up.
        if self.speculative.len() > 2 * self.capacity {
            let waiting = &self.waiting;
            self.speculative
                .retain(|k| matches!(waiting.get(k), Some((Lane::Speculative, _))));
        }
    }

    /// The next request to run, if a slot is free: urgent ones first. The
    /// caller runs it and calls [`Queue::finished`] with its key.
    pub fn start_next(&mut self) -> Option<Request> {
        if self.running.len() >= self.max_running {
            return None;
        }
        for lane in [Lane::Urgent, Lane::Speculative] {
            while let Some(key) = self.lane_mut(lane).pop_front() {
                // A stale entry: the key moved lanes, or already ran.
                if !matches!(self.waiting.get(&key), Some((l, _)) if *l == lane) {
                    continue;
                }
                let (_, request) = self.waiting.remove(&key)?;
                self.counts[index(lane)] -= 1;
                self.running.insert(key);
                self.shrink_when_idle();
                return Some(request);
            }
        }
        None
    }

    /// The identification of `key` ended (whatever it found).
    pub fn finished(&mut self, key: u64) {
        self.running.remove(&key);
    }

    /// Whether [`Queue::start_next`] would hand out a request now.
    pub fn can_start(&self) -> bool {
        self.running.len() < self.max_running && self.waiting() > 0
    }

    /// Requests waiting (both lanes).
    pub fn waiting(&self) -> usize {
        self.counts[0] + self.counts[1]
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether `lane` has room for more.
    pub fn has_room(&self, lane: Lane) -> bool {
        self.counts[index(lane)] < self.capacity
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lane_mut(&mut self, lane: Lane) -> &mut VecDeque<u64> {
        match lane {
            Lane::Urgent => &mut self.urgent,
            Lane::Speculative => &mut self.speculative,
        }
    }

    /// A burst leaves the lanes' buffers at their largest: give the memory
    /// back once they are empty.
    fn shrink_when_idle(&mut self) {
        if self.waiting.is_empty() {
            self.urgent.clear();
            self.speculative.clear();
            if self.waiting.capacity() > 64 {
                self.waiting.shrink_to(64);
                self.urgent.shrink_to(64);
                self.speculative.shrink_to(64);
            }
        }
    }
}

fn index(lane: Lane) -> usize {
    match lane {
        Lane::Urgent => 0,
        Lane::Speculative => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: u64) -> Request {
        Request {
            key,
            subject: Subject::Cgroup {
                pid: None,
                path: Some(format!("/c/{key}")),
            },
            first_event: Instant::now(),
            first_seen_ms: 1,
        }
    }

    fn drain(queue: &mut Queue) -> Vec<u64> {
        let mut order = Vec::new();
        while let Some(r) = queue.start_next() {
            order.push(r.key);
            queue.finished(r.key);
        }
        order
    }

    #[test]
    fn urgent_requests_run_first_and_in_order() {
        let mut queue = Queue::new(1, 10);
        for key in [1, 2, 3] {
            assert_eq!(queue.push(request(key), Lane::Speculative), Pushed::Queued);
        }
        assert_eq!(queue.push(request(4), Lane::Urgent), Pushed::Queued);
        assert_eq!(drain(&mut queue), [4, 1, 2, 3]);
    }

    #[test]
    fn a_cgroup_is_queued_once_and_an_exec_hurries_it() {
        let mut queue = Queue::new(1, 10);
        for key in [1, 2, 3] {
            queue.push(request(key), Lane::Speculative);
        }
        assert_eq!(queue.push(request(2), Lane::Speculative), Pushed::Coalesced);
        assert_eq!(queue.push(request(3), Lane::Urgent), Pushed::Coalesced);
        assert_eq!(queue.waiting(), 3);
        assert_eq!(drain(&mut queue), [3, 1, 2]);
        assert_eq!(queue.waiting(), 0);
    }

    #[test]
    fn a_running_cgroup_is_not_queued_again() {
        let mut queue = Queue::new(2, 10);
        queue.push(request(1), Lane::Urgent);
        let running = queue.start_next().unwrap();
        assert_eq!(queue.push(request(1), Lane::Urgent), Pushed::Coalesced);
        assert_eq!(queue.waiting(), 0);
        queue.finished(running.key);
        assert_eq!(queue.push(request(1), Lane::Urgent), Pushed::Queued);
    }

    #[test]
    fn at_most_max_running_run_at_once() {
        let mut queue = Queue::new(2, 10);
        for key in 0..5 {
            queue.push(request(key), Lane::Speculative);
        }
        let (a, b) = (queue.start_next().unwrap(), queue.start_next().unwrap());
        assert!(queue.start_next().is_none(), "a third ran");
        assert_eq!(queue.running(), 2);
        queue.finished(a.key);
        assert_eq!(queue.start_next().map(|r| r.key), Some(2));
        queue.finished(b.key);
    }

    #[test]
    fn a_full_lane_drops_and_the_other_lane_still_takes() {
        let mut queue = Queue::new(1, 3);
        for key in 0..3 {
            assert_eq!(queue.push(request(key), Lane::Speculative), Pushed::Queued);
        }
        assert_eq!(queue.push(request(9), Lane::Speculative), Pushed::Dropped);
        assert!(!queue.has_room(Lane::Speculative));
        assert_eq!(queue.push(request(10), Lane::Urgent), Pushed::Queued);
        assert_eq!(drain(&mut queue), [10, 0, 1, 2]);
    }

    #[test]
    fn a_burst_of_any_size_holds_at_most_capacity_per_lane() {
        let mut queue = Queue::new(4, 100);
        let mut dropped = 0;
        for key in 0..100_000 {
            if queue.push(request(key), Lane::Speculative) == Pushed::Dropped {
                dropped += 1;
            }
            // Every exec in a waiting cgroup hurries it: stale entries
            // stay bounded too.
            queue.hurry(key);
        }
        assert_eq!(queue.waiting(), 200);
        assert_eq!(dropped, 100_000 - 200);
        assert!(queue.urgent.len() + queue.speculative.len() <= 300);
        assert_eq!(drain(&mut queue).len(), 200);
        assert_eq!(queue.waiting(), 0);
    }
}
