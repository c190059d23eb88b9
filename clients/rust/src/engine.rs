//! The subscriber's gap-detection and gap-fill rules (docs/SUBSCRIBING.md,
//! PROTOCOL.md section 10), without sockets: the query socket is a
//! [`Transport`], so the unit tests drive the rules against a scripted
//! fake broker.
//!
//! State: the cursor `C` (every batch of the subscriptions with
//! `batch_id <= C` was handled or is before the start), `last[T]` (the
//! `last_seq` of the last batch handled per aggregate) and `floor` (batches
//! holding only seqs below it are not wanted: before the start).

use crate::error::{Error, Loss, Restart, Result};
use crate::model::Batch;
use crate::pb;
use std::collections::{HashMap, VecDeque};

/// One page of a fetch.
pub struct Page {
    pub reply: pb::FetchReply,
    pub batches: Vec<pb::SnapshotBatch>,
}

/// What the engine needs from the broker's query socket. A refusal comes
/// back as the typed error ([`Error::OutOfRetention`] for retention).
pub trait Transport {
    fn hello(&mut self) -> Result<pb::HelloReply>;
    fn fetch(&mut self, f: &pb::Fetch) -> Result<Page>;
}

/// What the engine queues for the application, in stream order.
#[derive(Debug)]
pub enum Item {
    Batch(Batch),
    Loss(Loss),
    Restart(Restart),
    /// A new resume position, valid once the items before it are taken.
    Position(u64),
}

/// Counters of a subscriber (docs/SUBSCRIBING.md section 9).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Batches returned (live and filled).
    pub batches: u64,
    /// Batches returned that came from a fetch.
    pub filled: u64,
    /// Live batches whose predecessor was missing.
    pub gaps: u64,
    /// Batches dropped as already returned.
    pub duplicates: u64,
    /// Batches dropped as before the start point.
    pub before_start: u64,
    /// Messages skipped as unreadable or inconsistent.
    pub malformed: u64,
    pub probes: u64,
    pub fetches: u64,
    pub fetch_timeouts: u64,
    pub lost: u64,
    pub restarts: u64,
    /// Live messages dropped at a restart (they are fetched again).
    pub discarded: u64,
}

pub struct Engine {
    subs: Vec<(String, bool)>,
    pub cursor: u64,
    last: HashMap<String, u64>,
    pub epoch: u64,
    max_seq: u64,
    floor: u64,
    pub newest_live: u64,
    marks: VecDeque<(u64, u64)>,
    position: u64,
    pub out: VecDeque<Item>,
    pub stats: SubscriberStats,
    /// Set when a restart that reset the state was seen: the caller drops
    /// its queued live messages.
    pub reset: bool,
    /// Set when a restart interrupted a walk: probe again.
    pub restarted: bool,
}

fn oor(e: &Error) -> Option<(u64, u64)> {
    match e {
        Error::OutOfRetention {
            retained_first_seq,
            retained_first_batch_id,
            ..
        } => Some((*retained_first_seq, *retained_first_batch_id)),
        _ => None,
    }
}

impl Engine {
    pub fn new(subs: Vec<(String, bool)>) -> Engine {
        Engine {
            subs,
            cursor: 0,
            last: HashMap::new(),
            epoch: 0,
            max_seq: 0,
            floor: 0,
            newest_live: 0,
            marks: VecDeque::new(),
            position: 0,
            out: VecDeque::new(),
            stats: SubscriberStats::default(),
            reset: false,
            restarted: false,
        }
    }

    fn matches(&self, agg: &str) -> bool {
        self.subs.iter().any(|(n, exact)| {
            if *exact {
                agg == n
            } else {
                agg.starts_with(n.as_str())
            }
        })
    }

    fn loss(&mut self, l: Loss) {
        self.stats.lost += 1;
        self.out.push_back(Item::Loss(l));
    }

    fn push_position(&mut self, p: u64) {
        if p > self.position {
            self.position = p;
            self.out.push_back(Item::Position(p));
        }
    }

    fn set_cursor(&mut self, c: u64) {
        if c > self.cursor {
            self.cursor = c;
        }
        let mut best = 0;
        while let Some(&(b, w)) = self.marks.front() {
            if b > self.cursor {
                break;
            }
            best = best.max(w);
            self.marks.pop_front();
        }
        if best != 0 {
            self.push_position(best);
        }
    }

    fn mark(&mut self, batch_id: u64, low_seq: u64) {
        if low_seq == 0 {
            return;
        }
        if self.marks.back().map_or(true, |&(b, _)| batch_id > b) {
            if self.marks.len() >= 64 {
                self.marks.pop_front();
            }
            self.marks.push_back((batch_id, low_seq));
        }
        if batch_id <= self.cursor {
            self.set_cursor(self.cursor);
        }
    }

    /// Compares a reply's epoch with the known one (PROTOCOL.md 10.7).
    /// Returns true when the broker restarted.
    pub fn check_epoch(&mut self, epoch: u64, broker_last_seq: u64) -> bool {
        if epoch == 0 || epoch == self.epoch {
            return false;
        }
        if self.epoch == 0 {
            self.epoch = epoch;
            return false;
        }
        let kept = broker_last_seq >= self.max_seq;
        self.out.push_back(Item::Restart(Restart {
            old_epoch: self.epoch,
            new_epoch: epoch,
            counters_kept: kept,
        }));
        self.stats.restarts += 1;
        self.epoch = epoch;
        self.restarted = true;
        if !kept {
            self.cursor = 0;
            self.last.clear();
            self.max_seq = 0;
            self.floor = 0;
            self.marks.clear();
            self.newest_live = 0;
            self.position = 0;
            self.push_position(1);
            self.reset = true;
        }
        true
    }

    fn fetch(&mut self, t: &mut dyn Transport, f: &pb::Fetch) -> Result<Option<Page>> {
        self.stats.fetches += 1;
        let p = t.fetch(f)?;
        if self.check_epoch(p.reply.epoch, p.reply.last_seq) {
            return Ok(None);
        }
        if p.batches.len() != p.reply.count as usize {
            return Err(Error::Protocol(format!(
                "fetch reply: count {} but {} batches",
                p.reply.count,
                p.batches.len()
            )));
        }
        Ok(Some(p))
    }

    fn deliver(&mut self, b: pb::SnapshotBatch, filled: bool) {
        self.last.insert(b.aggregate.clone(), b.last_seq);
        self.max_seq = self.max_seq.max(b.last_seq);
        if b.last_seq < self.floor {
            self.stats.before_start += 1;
            return;
        }
        self.stats.batches += 1;
        if filled {
            self.stats.filled += 1;
        }
        self.out.push_back(Item::Batch(Batch::from_pb(b, filled)));
    }

    /// Fixes the start from the hello read after subscribing: live from
    /// its newest batch, or (with `resume_from_seq`) every retained batch
    /// holding a seq at or above it first.
    pub fn start(
        &mut self,
        t: &mut dyn Transport,
        hello: &pb::HelloReply,
        resume_from_seq: u64,
    ) -> Result<()> {
        self.epoch = hello.epoch;
        self.cursor = hello.last_batch_id;
        if resume_from_seq == 0 {
            self.floor = hello.low_seq;
            self.push_position(hello.low_seq);
            return Ok(());
        }
        self.floor = resume_from_seq;
        self.push_position(resume_from_seq);
        let subs = self.subs.clone();
        for (name, exact) in subs {
            let mut from = resume_from_seq;
            let mut after = 0;
            loop {
                let f = pb::Fetch {
                    prefix: name.clone(),
                    exact,
                    from_seq: from,
                    after_batch_id: after,
                    ..Default::default()
                };
                let page = match self.fetch(t, &f) {
                    Ok(Some(p)) => p,
                    Ok(None) => return Ok(()),
                    Err(e) => match oor(&e) {
                        Some((rs, rb)) if rs > from => {
                            self.loss(Loss {
                                aggregate: if exact { name.clone() } else { String::new() },
                                first_seq: from,
                                last_seq: rs - 1,
                                retained_first_seq: rs,
                                retained_first_batch_id: rb,
                                ..Default::default()
                            });
                            from = rs;
                            after = 0;
                            continue;
                        }
                        _ => return Err(e),
                    },
                };
                for m in page.batches {
                    self.handle_filled(m);
                }
                if page.reply.last_batch_id <= after || !page.reply.more {
                    break;
                }
                after = page.reply.last_batch_id;
            }
        }
        self.mark(hello.last_batch_id, hello.low_seq);
        self.set_cursor(hello.last_batch_id);
        Ok(())
    }

    fn handle_filled(&mut self, m: pb::SnapshotBatch) {
        if !self.matches(&m.aggregate) {
            return;
        }
        match self.last.get(&m.aggregate) {
            Some(&lt) if m.last_seq <= lt => {
                self.stats.duplicates += 1;
                return;
            }
            Some(&lt) if m.prev_last_seq > lt => {
                // Its predecessors were evicted before they could be read.
                let l = Loss {
                    aggregate: m.aggregate.clone(),
                    first_seq: lt + 1,
                    last_seq: m.prev_last_seq,
                    ..Default::default()
                };
                self.loss(l);
            }
            _ => {}
        }
        self.deliver(m, true);
    }

    /// A batch received on the pub socket.
    pub fn on_live(&mut self, t: &mut dyn Transport, b: pb::SnapshotBatch) -> Result<()> {
        if b.batch_id <= self.cursor {
            if self
                .last
                .get(&b.aggregate)
                .map_or(false, |&l| b.last_seq <= l)
            {
                self.stats.duplicates += 1;
            } else {
                self.stats.before_start += 1;
            }
            return Ok(());
        }
        if !self.matches(&b.aggregate) {
            self.stats.malformed += 1;
            return Ok(());
        }
        self.newest_live = self.newest_live.max(b.batch_id);
        let lt = self.last.get(&b.aggregate).copied();
        match lt {
            Some(lt) if b.last_seq <= lt => {
                self.stats.duplicates += 1;
                return Ok(());
            }
            Some(lt) if b.prev_last_seq == lt => {
                self.deliver(b, false);
                return Ok(());
            }
            Some(lt) if b.prev_last_seq < lt => {
                // Overlaps what was handled: cannot happen with one broker.
                self.stats.malformed += 1;
                return Ok(());
            }
            None if b.prev_last_seq == 0 || b.prev_last_seq < self.floor => {
                self.deliver(b, false);
                return Ok(());
            }
            _ => {}
        }
        // A gap (or an aggregate first seen whose predecessor may have been
        // missed): handle every batch up to this one, then this one.
        self.stats.gaps += 1;
        self.probe(t, b.batch_id - 1)?;
        if self.restarted {
            return Ok(());
        }
        match self.last.get(&b.aggregate).copied() {
            Some(lt2) if b.last_seq <= lt2 => {
                self.stats.duplicates += 1;
                return Ok(());
            }
            Some(lt2) if b.prev_last_seq > lt2 => {
                let l = Loss {
                    aggregate: b.aggregate.clone(),
                    first_seq: lt2 + 1,
                    last_seq: b.prev_last_seq,
                    ..Default::default()
                };
                self.loss(l);
            }
            _ => {}
        }
        self.deliver(b, false);
        Ok(())
    }

    /// Hello, then a probe to the broker's newest batch (`idle`) or to the
    /// newest batch received live.
    pub fn probe_now(&mut self, t: &mut dyn Transport, idle: bool) -> Result<()> {
        let h = t.hello()?;
        if self.check_epoch(h.epoch, h.last_seq) {
            return Ok(());
        }
        self.mark(h.last_batch_id, h.low_seq);
        let upto = if idle {
            h.last_batch_id
        } else {
            self.newest_live.min(h.last_batch_id)
        };
        self.probe(t, upto)
    }

    fn wanted(&self, h: &pb::SnapshotBatch) -> bool {
        self.matches(&h.aggregate)
            && h.last_seq >= self.floor
            && self
                .last
                .get(&h.aggregate)
                .map_or(true, |&l| h.last_seq > l)
    }

    /// Reads the headers of every batch of the subscriptions after the
    /// cursor up to `upto`, fetches the ones not handled yet (in runs of
    /// consecutive ones, one fetch a run), then moves the cursor to `upto`.
    pub fn probe(&mut self, t: &mut dyn Transport, upto: u64) -> Result<()> {
        if upto <= self.cursor {
            return Ok(());
        }
        self.stats.probes += 1;
        self.restarted = false;
        let subs = self.subs.clone();
        for (name, exact) in subs {
            let mut after = self.cursor;
            while after < upto {
                let f = pb::Fetch {
                    prefix: name.clone(),
                    exact,
                    after_batch_id: after,
                    headers_only: true,
                    ..Default::default()
                };
                let page = match self.fetch(t, &f) {
                    Ok(Some(p)) => p,
                    Ok(None) => return Ok(()),
                    Err(e) => match oor(&e) {
                        Some((rs, rb)) if rb > after + 1 => {
                            self.loss(Loss {
                                aggregate: if exact { name.clone() } else { String::new() },
                                first_batch_id: after + 1,
                                last_batch_id: (rb - 1).min(upto),
                                retained_first_seq: rs,
                                retained_first_batch_id: rb,
                                ..Default::default()
                            });
                            after = rb - 1;
                            continue;
                        }
                        _ => return Err(e),
                    },
                };
                let mut run: Vec<u64> = Vec::new();
                for h in &page.batches {
                    if h.batch_id > upto {
                        break;
                    }
                    if h.batch_id <= after {
                        continue;
                    }
                    if self.wanted(h) {
                        run.push(h.batch_id);
                    } else if !run.is_empty() {
                        self.fill_run(t, &name, exact, &run)?;
                        run.clear();
                        if self.restarted {
                            return Ok(());
                        }
                    }
                }
                if !run.is_empty() {
                    self.fill_run(t, &name, exact, &run)?;
                    if self.restarted {
                        return Ok(());
                    }
                }
                let r = &page.reply;
                if r.last_batch_id <= after {
                    break; // no progress: nothing more to read
                }
                after = r.last_batch_id;
                if r.last_batch_id <= upto {
                    self.mark(r.last_batch_id, r.cursor_low_seq);
                }
                if !r.more {
                    break;
                }
            }
        }
        self.set_cursor(upto);
        Ok(())
    }

    /// Fetches the `run` (batch ids of consecutive matching batches) whole.
    fn fill_run(
        &mut self,
        t: &mut dyn Transport,
        name: &str,
        exact: bool,
        run: &[u64],
    ) -> Result<()> {
        let mut after = run[0] - 1;
        let mut left = run.len();
        while left > 0 {
            let f = pb::Fetch {
                prefix: name.to_string(),
                exact,
                after_batch_id: after,
                max_batches: left.min(u32::MAX as usize) as u32,
                ..Default::default()
            };
            let page = match self.fetch(t, &f) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) => match oor(&e) {
                    Some((rs, rb)) => {
                        // Evicted between the header and the fetch.
                        self.loss(Loss {
                            aggregate: if exact {
                                name.to_string()
                            } else {
                                String::new()
                            },
                            first_batch_id: after + 1,
                            last_batch_id: run[run.len() - 1],
                            retained_first_seq: rs,
                            retained_first_batch_id: rb,
                            ..Default::default()
                        });
                        return Ok(());
                    }
                    None => return Err(e),
                },
            };
            let n = page.batches.len();
            for m in page.batches {
                if m.batch_id > run[run.len() - 1] {
                    break;
                }
                self.handle_filled(m);
            }
            left = left.saturating_sub(n);
            if page.reply.last_batch_id <= after || !page.reply.more && n == 0 {
                break;
            }
            after = page.reply.last_batch_id;
        }
        Ok(())
    }
}
