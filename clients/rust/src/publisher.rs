//! The publisher: one DEALER on the broker's ingest socket, a bounded window
//! of acked requests in flight, and wire batching.
//!
//! There is no background thread: the socket is driven by the calls the
//! application makes (`publish`, `poll`, `flush`, `publish_wait`, `close`).
//!
//! When does an open batch go on the wire?
//! * with `linger` 0 (the default), at once while fewer than `eager`
//!   acked requests are in flight; otherwise when a reply brings the count
//!   below it (noticed on a later call) or the batch is full, so that
//!   batches grow with the load;
//! * with a `linger`, once the batch is that old (checked on each call) or
//!   full;
//! * always on `flush`, `close` and `publish_wait`.
//!
//! Backpressure (PROTOCOL.md 11): when the window is full and the open
//! batch is full too, or the socket's send queue is full because the broker
//! stopped reading, `publish` waits (reading replies meanwhile, up to
//! `send_timeout`) and `try_publish` returns [`Error::WouldBlock`] without
//! taking the event. Nothing is ever dropped.

use crate::codec;
use crate::conn::{self, SockOpts};
use crate::error::{Error, Refusal, Result, Scope};
use crate::model::{Ack, AckLevel, BrokerInfo, CurveKeys, Event};
use crate::pb;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The number of an event given to [`Publisher::publish`], counted from 1
/// per publisher: its outcome comes with the same ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// The outcome of one event.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ticket: Ticket,
    /// The ack, or why the event was refused (a typed [`Error`] whose
    /// [`Refusal::scope`] says whether the whole request was refused), or
    /// [`Error::Timeout`] when no reply came in time (outcome unknown).
    pub result: Result<Ack>,
}

/// Counters of a publisher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    pub requests: u64,
    pub events: u64,
    pub acked: u64,
    pub duplicates: u64,
    pub refused: u64,
    pub timeouts: u64,
    pub resends: u64,
    pub would_block: u64,
    pub unmatched_replies: u64,
    pub bad_replies: u64,
}

type OnResult = Box<dyn FnMut(&Outcome) + Send>;

/// Options of a [`Publisher`]; see each setter.
pub struct PublisherBuilder {
    endpoint: String,
    ack: AckLevel,
    window: usize,
    eager: usize,
    batch_events: usize,
    batch_bytes: usize,
    linger: Duration,
    timeout: Duration,
    send_timeout: Duration,
    max_resends: u32,
    producer_id: String,
    producer_seq_start: u64,
    stamp_time: bool,
    duplicate_is_error: bool,
    curve: Option<CurveKeys>,
    sndhwm: i32,
    rcvhwm: i32,
    hello_timeout: Duration,
    client: String,
    on_result: Option<OnResult>,
    context: Option<zmq::Context>,
}

impl PublisherBuilder {
    /// Default ack level of [`Publisher::publish`] (`Sequenced`).
    pub fn ack(mut self, ack: AckLevel) -> Self {
        self.ack = ack;
        self
    }
    /// Most acked requests without a reply (64). Keep it below half the
    /// broker's `broker.hwm` (PROTOCOL.md 11.3).
    pub fn window(mut self, n: usize) -> Self {
        self.window = n;
        self
    }
    /// With `linger` 0: a request goes out at once while fewer than this
    /// many are in flight (2).
    pub fn eager(mut self, n: usize) -> Self {
        self.eager = n;
        self
    }
    /// Most events per request (1000; capped by the broker's
    /// `max_events_per_request`).
    pub fn batch_events(mut self, n: usize) -> Self {
        self.batch_events = n;
        self
    }
    /// About this many bytes per request (256 KiB; capped below the
    /// broker's `max_message_bytes`).
    pub fn batch_bytes(mut self, n: usize) -> Self {
        self.batch_bytes = n;
        self
    }
    /// How long an open batch may wait for more events (0).
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }
    /// How long to wait for each acked request's reply (10 s; add the
    /// longest batching delay for `Published`).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Longest wait of a blocking call for room in the window or socket
    /// (30 s); then [`Error::Timeout`].
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.send_timeout = d;
        self
    }
    /// How many times a request without a reply is sent again before its
    /// events time out (2). Only requests whose every event carries a
    /// producer id and seq, or an event id, are resent: the broker answers
    /// what it had accepted with the original seq.
    pub fn max_resends(mut self, n: u32) -> Self {
        self.max_resends = n;
        self
    }
    /// Stamped on every event; each event also gets the next producer seq
    /// (from `producer_seq_start`, default 1) unless it carries one.
    pub fn producer_id(mut self, id: impl Into<String>) -> Self {
        self.producer_id = id.into();
        self
    }
    pub fn producer_seq_start(mut self, seq: u64) -> Self {
        self.producer_seq_start = seq;
        self
    }
    /// Set `client_ts_ms` from the local clock when an event has none.
    pub fn stamp_time(mut self, on: bool) -> Self {
        self.stamp_time = on;
        self
    }
    /// Report `ERR_DUPLICATE` as [`Error::Duplicate`] instead of an
    /// [`Ack`] with `duplicate` set.
    pub fn duplicate_is_error(mut self, on: bool) -> Self {
        self.duplicate_is_error = on;
        self
    }
    /// CURVE keys (the broker must have `[security]` configured).
    pub fn curve(mut self, keys: CurveKeys) -> Self {
        self.curve = Some(keys);
        self
    }
    /// ZeroMQ high-water marks of the DEALER (1000, 100000).
    pub fn hwm(mut self, sndhwm: i32, rcvhwm: i32) -> Self {
        self.sndhwm = sndhwm;
        self.rcvhwm = rcvhwm;
        self
    }
    /// How long to wait for the broker's hello reply at start (5 s).
    pub fn hello_timeout(mut self, d: Duration) -> Self {
        self.hello_timeout = d;
        self
    }
    /// Free text the broker logs (`Hello.client`).
    pub fn client_name(mut self, s: impl Into<String>) -> Self {
        self.client = s.into();
        self
    }
    /// Called with each event's outcome as it settles (with
    /// `AckLevel::None`: only for refusals).
    pub fn on_result(mut self, f: impl FnMut(&Outcome) + Send + 'static) -> Self {
        self.on_result = Some(Box::new(f));
        self
    }
    /// Share a ZeroMQ context (default: a new one).
    pub fn context(mut self, ctx: zmq::Context) -> Self {
        self.context = Some(ctx);
        self
    }

    /// Connects, says hello (checking the broker speaks this version and
    /// learning its limits) and returns the publisher.
    pub fn connect(self) -> Result<Publisher> {
        if self.window == 0 {
            return Err(Error::Config("window is 0: it must be at least 1".into()));
        }
        if self.batch_events == 0 || self.batch_bytes == 0 {
            return Err(Error::Config(
                "batch_events and batch_bytes must be at least 1".into(),
            ));
        }
        let ctx = self.context.unwrap_or_default();
        let rcvhwm = self.rcvhwm.max(2 * self.window as i32 + 16);
        let sock = conn::socket(
            &ctx,
            zmq::DEALER,
            &self.endpoint,
            &SockOpts {
                sndhwm: self.sndhwm,
                rcvhwm,
                linger_ms: 1000,
                rcvbuf: 0,
                curve: &self.curve,
            },
        )?;
        let info = conn::hello(&sock, 1, &self.client, self.hello_timeout, |_| {})?;
        let max_req = (if info.max_message_bytes == 0 {
            4 << 20
        } else {
            info.max_message_bytes as usize
        })
        .saturating_sub(64);
        let max_events = if info.max_events_per_request == 0 {
            self.batch_events
        } else {
            info.max_events_per_request as usize
        };
        Ok(Publisher {
            _ctx: ctx,
            sock,
            info,
            ack: self.ack,
            window: self.window,
            eager: self.eager.clamp(1, self.window),
            batch_events: self.batch_events.min(max_events).max(1),
            batch_bytes: self.batch_bytes.min(max_req).max(1),
            max_req,
            linger: self.linger,
            timeout: self.timeout,
            send_timeout: self.send_timeout,
            max_resends: self.max_resends,
            producer_id: self.producer_id,
            next_producer_seq: self.producer_seq_start,
            stamp_time: self.stamp_time,
            dup_error: self.duplicate_is_error,
            on_result: self.on_result,
            next_rid: 2,
            next_ticket: 1,
            open: Vec::new(),
            open_count: 0,
            open_first: 1,
            open_ack: self.ack.wire(),
            open_since: Instant::now(),
            open_safe: true,
            inflight: HashMap::new(),
            none_recent: VecDeque::new(),
            next_check: Instant::now(),
            waiting: None,
            stats: PublisherStats::default(),
            closed: false,
        })
    }
}

struct Inflight {
    first: u64,
    count: u32,
    deadline: Instant,
    attempts: u32,
    /// The request's bytes, kept only when it may be resent.
    data: Option<Vec<u8>>,
}

/// Publishes events to a snapbus broker.
///
/// ```no_run
/// use snapbus::{AckLevel, Event, Publisher};
/// let mut p = Publisher::builder("tcp://127.0.0.1:7701")
///     .ack(AckLevel::Sequenced)
///     .producer_id("node-7")
///     .connect()?;
/// let ack = p.publish_wait(&Event::new("e3/42", "Started", b"hello".to_vec()))?;
/// println!("seq {}", ack.seq);
/// # Ok::<(), snapbus::Error>(())
/// ```
///
/// Not thread-safe (like its ZeroMQ socket): use one per thread.
pub struct Publisher {
    _ctx: zmq::Context,
    sock: zmq::Socket,
    info: BrokerInfo,
    ack: AckLevel,
    window: usize,
    eager: usize,
    batch_events: usize,
    batch_bytes: usize,
    max_req: usize,
    linger: Duration,
    timeout: Duration,
    send_timeout: Duration,
    max_resends: u32,
    producer_id: String,
    next_producer_seq: u64,
    stamp_time: bool,
    dup_error: bool,
    on_result: Option<OnResult>,
    next_rid: u64,
    next_ticket: u64,
    open: Vec<u8>,
    open_count: u32,
    open_first: u64,
    open_ack: i32,
    open_since: Instant,
    open_safe: bool,
    inflight: HashMap<u64, Inflight>,
    /// Recent `ACK_NONE` requests, whose refusal may still come.
    none_recent: VecDeque<(u64, u64, u32)>,
    next_check: Instant,
    waiting: Option<(u64, Option<Result<Ack>>)>,
    stats: PublisherStats,
    closed: bool,
}

const NONE_RECENT: usize = 4096;

impl Publisher {
    /// Options, starting from the defaults, for the ingest endpoint.
    pub fn builder(endpoint: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder {
            endpoint: endpoint.into(),
            ack: AckLevel::Sequenced,
            window: 64,
            eager: 2,
            batch_events: 1000,
            batch_bytes: 256 * 1024,
            linger: Duration::ZERO,
            timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            max_resends: 2,
            producer_id: String::new(),
            producer_seq_start: 1,
            stamp_time: false,
            duplicate_is_error: false,
            curve: None,
            sndhwm: 1000,
            rcvhwm: 100_000,
            hello_timeout: Duration::from_secs(5),
            client: concat!("snapbus-rust ", env!("CARGO_PKG_VERSION")).into(),
            on_result: None,
            context: None,
        }
    }

    /// Connects with the default options.
    pub fn connect(endpoint: impl Into<String>) -> Result<Publisher> {
        Publisher::builder(endpoint).connect()
    }

    /// The broker's hello reply (limits, shard, epoch).
    pub fn info(&self) -> &BrokerInfo {
        &self.info
    }

    /// Counters.
    pub fn stats(&self) -> PublisherStats {
        self.stats
    }

    /// Acked requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The producer seq the next event without one will get.
    pub fn next_producer_seq(&self) -> u64 {
        self.next_producer_seq
    }

    /// Takes one event at the default ack level, waiting while the window
    /// and the socket are full (at most `send_timeout`). Its outcome goes to
    /// `on_result`.
    pub fn publish(&mut self, ev: &Event) -> Result<Ticket> {
        self.add(ev, self.ack.wire(), true)
    }

    /// As [`publish`](Self::publish) at another ack level.
    pub fn publish_with(&mut self, ev: &Event, ack: AckLevel) -> Result<Ticket> {
        self.add(ev, ack.wire(), true)
    }

    /// As [`publish`](Self::publish), but returns [`Error::WouldBlock`]
    /// instead of waiting; the event was then not taken.
    pub fn try_publish(&mut self, ev: &Event) -> Result<Ticket> {
        self.add(ev, self.ack.wire(), false)
    }

    /// Publishes one event at the default ack level and waits for its
    /// outcome (at most `timeout` × (1 + `max_resends`) plus the time to
    /// send).
    pub fn publish_wait(&mut self, ev: &Event) -> Result<Ack> {
        self.publish_wait_with(ev, self.ack)
    }

    /// As [`publish_wait`](Self::publish_wait) at another ack level.
    pub fn publish_wait_with(&mut self, ev: &Event, ack: AckLevel) -> Result<Ack> {
        self.waiting = Some((self.next_ticket, None));
        let r = self.wait_inner(ev, ack);
        self.waiting = None;
        r
    }

    fn wait_inner(&mut self, ev: &Event, ack: AckLevel) -> Result<Ack> {
        let t = self.add(ev, ack.wire(), true)?;
        if self.open_count > 0 {
            self.ship(true)?;
        }
        if ack == AckLevel::None {
            return Ok(Ack::default());
        }
        loop {
            if let Some((w, Some(_))) = &self.waiting {
                if *w == t.0 {
                    if let Some((_, Some(r))) = self.waiting.take() {
                        return r;
                    }
                }
            }
            self.pump(100)?;
        }
    }

    /// Reads the replies that have arrived (waiting up to `timeout` for the
    /// first), ships a lingering batch that is due, resends or expires
    /// requests without a reply. Returns the number of replies read.
    pub fn poll(&mut self, timeout: Duration) -> Result<usize> {
        if self.open_count > 0 && self.open_since.elapsed() >= self.linger {
            self.try_ship()?;
        }
        self.pump(timeout.as_millis().min(i64::MAX as u128) as i64)
    }

    /// Sends the open batch and waits until every acked request has its
    /// outcome. Returns false if `timeout` passed first.
    pub fn flush(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        if self.open_count > 0 {
            match self.ship_until(true, deadline) {
                Ok(()) => {}
                Err(Error::Timeout(_)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        while !self.inflight.is_empty() {
            let left = conn::ms_until(deadline);
            if left == 0 {
                return Ok(false);
            }
            self.pump(left.min(100))?;
        }
        Ok(true)
    }

    /// Flushes (at most `timeout`) and closes the socket; events still
    /// without an outcome get [`Error::Timeout`] (outcome unknown).
    pub fn close(mut self, timeout: Duration) -> Result<bool> {
        let r = self.flush(timeout);
        self.abandon();
        r
    }

    fn abandon(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let rids: Vec<u64> = self.inflight.keys().copied().collect();
        for rid in rids {
            if let Some(f) = self.inflight.remove(&rid) {
                let e = Error::Timeout(format!(
                    "publisher closed before the reply to request {}: outcome unknown",
                    rid
                ));
                self.settle_all(f.first, f.count, &e);
            }
        }
        if self.open_count > 0 {
            let e = Error::Closed("publisher closed before the event was sent");
            let (first, n) = (self.open_first, self.open_count);
            self.settle_all(first, n, &e);
            self.open.clear();
            self.open_count = 0;
        }
    }

    // ------------------------------------------------------------ internals

    fn add(&mut self, ev: &Event, ack: i32, block: bool) -> Result<Ticket> {
        if self.closed {
            return Err(Error::Closed("publisher is closed"));
        }
        let pid = self.producer_id.len();
        let size = ev.payload.len()
            + ev.aggregate.len()
            + ev.event_type.len()
            + ev.event_id.as_ref().map_or(0, |s| s.len() + 4)
            + if pid > 0 { pid + 16 } else { 0 }
            + 48;
        if size > self.max_req {
            return Err(Error::TooLarge(Refusal {
                scope: Scope::Event,
                detail: format!(
                    "event of about {} bytes does not fit a request of the broker's \
                     max_message_bytes {}: make the payload smaller",
                    size, self.info.max_message_bytes
                ),
                request_id: 0,
            }));
        }
        let n = self.open_count as usize;
        if n > 0
            && (ack != self.open_ack
                || n >= self.batch_events
                || self.open.len() + size > self.batch_bytes)
        {
            self.ship(block)?;
        }
        let pseq = match ev.producer_seq {
            Some(s) => s,
            None if pid > 0 => self.next_producer_seq,
            None => 0,
        };
        let ts = match ev.client_ts_ms {
            Some(t) => t,
            None if self.stamp_time => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            None => 0,
        };
        codec::append_event(&mut self.open, ev, &self.producer_id, pseq, ts);
        if pid > 0 && ev.producer_seq.is_none() {
            self.next_producer_seq += 1;
        }
        let safe = (pid > 0 && pseq != 0) || ev.event_id.as_ref().map_or(false, |s| !s.is_empty());
        let t = Ticket(self.next_ticket);
        self.next_ticket += 1;
        if self.open_count == 0 {
            self.open_first = t.0;
            self.open_ack = ack;
            self.open_since = Instant::now();
            self.open_safe = true;
        }
        self.open_count += 1;
        self.open_safe &= safe;
        let n = self.open_count as usize;
        if n >= self.batch_events || self.open.len() >= self.batch_bytes {
            self.try_ship()?;
        } else if !self.linger.is_zero() {
            if self.open_since.elapsed() >= self.linger {
                self.try_ship()?;
            }
        } else if ack == 0 || self.inflight.len() < self.eager {
            self.try_ship()?;
        } else if n & 7 == 7 && self.readable()? {
            // A reply came (checked every 8 events: the check is a system
            // call): if it frees the pipeline, the batch goes now.
            self.pump(0)?;
            if self.inflight.len() < self.eager {
                self.try_ship()?;
            }
        }
        Ok(t)
    }

    fn readable(&self) -> Result<bool> {
        Ok(self.sock.get_events()?.contains(zmq::POLLIN))
    }

    fn encode_open(&self, rid: u64) -> Vec<u8> {
        codec::encode_publish(rid, self.open_ack, &self.open)
    }

    fn sent(&mut self, rid: u64, data: Vec<u8>) {
        let (first, count) = (self.open_first, self.open_count);
        self.stats.requests += 1;
        self.stats.events += count as u64;
        if self.open_ack == 0 {
            if self.none_recent.len() >= NONE_RECENT {
                self.none_recent.pop_front();
            }
            self.none_recent.push_back((rid, first, count));
            if let Some((w, slot)) = &mut self.waiting {
                if *w >= first && *w < first + count as u64 {
                    *slot = Some(Ok(Ack::default()));
                }
            }
        } else {
            let keep = self.open_safe && self.max_resends > 0;
            self.inflight.insert(
                rid,
                Inflight {
                    first,
                    count,
                    deadline: Instant::now() + self.timeout,
                    attempts: 0,
                    data: if keep { Some(data) } else { None },
                },
            );
        }
        self.open.clear();
        self.open_count = 0;
    }

    /// Ships the open batch if that needs no waiting.
    fn try_ship(&mut self) -> Result<bool> {
        if self.open_ack != 0 && self.inflight.len() >= self.window {
            self.pump(0)?;
            if self.inflight.len() >= self.window {
                return Ok(false);
            }
        }
        let rid = self.next_rid;
        let data = self.encode_open(rid);
        match self.sock.send(&data[..], zmq::DONTWAIT) {
            Ok(()) => {
                self.next_rid += 1;
                self.sent(rid, data);
                Ok(true)
            }
            Err(zmq::Error::EAGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn ship(&mut self, block: bool) -> Result<()> {
        let deadline = Instant::now() + self.send_timeout;
        self.ship_until(block, deadline)
    }

    fn ship_until(&mut self, block: bool, deadline: Instant) -> Result<()> {
        while self.open_ack != 0 && self.inflight.len() >= self.window {
            self.pump(0)?;
            if self.inflight.len() < self.window {
                break;
            }
            if !block {
                self.stats.would_block += 1;
                return Err(Error::WouldBlock("the in-flight window is full"));
            }
            let left = conn::ms_until(deadline);
            if left == 0 {
                return Err(Error::Timeout(format!(
                    "the in-flight window ({} requests) stayed full for {:?}",
                    self.window, self.send_timeout
                )));
            }
            self.pump(left.min(100))?;
        }
        let rid = self.next_rid;
        let data = self.encode_open(rid);
        loop {
            match self.sock.send(&data[..], zmq::DONTWAIT) {
                Ok(()) => break,
                Err(zmq::Error::EAGAIN) => {
                    if !block {
                        self.stats.would_block += 1;
                        return Err(Error::WouldBlock(
                            "the broker is applying backpressure (socket send queue full)",
                        ));
                    }
                    let left = conn::ms_until(deadline);
                    if left == 0 {
                        return Err(Error::Timeout(format!(
                            "the broker did not take the request within {:?} (backpressure)",
                            self.send_timeout
                        )));
                    }
                    let mut items = [self.sock.as_poll_item(zmq::POLLIN | zmq::POLLOUT)];
                    zmq::poll(&mut items, left.min(100))?;
                    if items[0].is_readable() {
                        self.pump(0)?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.next_rid += 1;
        self.sent(rid, data);
        Ok(())
    }

    /// Handles every reply available, waiting up to `timeout_ms` for one.
    fn pump(&mut self, timeout_ms: i64) -> Result<usize> {
        let mut got = 0;
        if timeout_ms > 0 && self.sock.poll(zmq::POLLIN, timeout_ms)? > 0 {
            let frames = self.sock.recv_multipart(zmq::DONTWAIT)?;
            self.on_reply(frames);
            got += 1;
        }
        loop {
            match self.sock.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => {
                    self.on_reply(frames);
                    got += 1;
                }
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let now = Instant::now();
        if now >= self.next_check {
            self.next_check = now + Duration::from_millis(20);
            self.expire(now)?;
        }
        Ok(got)
    }

    fn expire(&mut self, now: Instant) -> Result<()> {
        let due: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(rid, _)| *rid)
            .collect();
        for rid in due {
            let resend = match self.inflight.get(&rid) {
                Some(f) => f.data.is_some() && f.attempts < self.max_resends,
                None => continue,
            };
            if resend {
                // Same request, same id: the broker answers the events it
                // had taken ERR_DUPLICATE with their original seqs.
                let f = self.inflight.get_mut(&rid).expect("checked above");
                let data = f.data.as_ref().expect("checked above");
                match self.sock.send(&data[..], zmq::DONTWAIT) {
                    Ok(()) => {
                        f.attempts += 1;
                        f.deadline = now + self.timeout;
                        self.stats.resends += 1;
                    }
                    Err(zmq::Error::EAGAIN) => {
                        f.deadline = now + Duration::from_millis(100);
                    }
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            if let Some(f) = self.inflight.remove(&rid) {
                self.stats.timeouts += 1;
                let e = Error::Timeout(format!(
                    "no reply to request {} within {:?} after {} resend(s): outcome unknown; \
                     resend with the same producer id and seq",
                    rid, self.timeout, f.attempts
                ));
                self.settle_all(f.first, f.count, &e);
            }
        }
        Ok(())
    }

    fn settle(&mut self, ticket: u64, result: Result<Ack>) {
        match &result {
            Ok(a) if a.duplicate => self.stats.duplicates += 1,
            Ok(_) => self.stats.acked += 1,
            Err(Error::Timeout(_)) | Err(Error::Closed(_)) => {}
            Err(_) => self.stats.refused += 1,
        }
        if let Some((w, slot)) = &mut self.waiting {
            if *w == ticket {
                *slot = Some(result.clone());
            }
        }
        if let Some(f) = self.on_result.as_mut() {
            f(&Outcome {
                ticket: Ticket(ticket),
                result,
            });
        }
    }

    fn settle_all(&mut self, first: u64, count: u32, e: &Error) {
        for t in first..first + count as u64 {
            self.settle(t, Err(e.clone()));
        }
    }

    fn on_reply(&mut self, frames: Vec<Vec<u8>>) {
        let rep = match codec::decode_reply(&frames) {
            Ok((rep, _)) => rep,
            Err(_) => {
                self.stats.bad_replies += 1;
                return;
            }
        };
        let rid = rep.request_id;
        let (first, count) = if let Some(f) = self.inflight.remove(&rid) {
            (f.first, f.count)
        } else if let Some(i) = self.none_recent.iter().position(|x| x.0 == rid) {
            let (_, first, count) = self.none_recent.remove(i).expect("index from position");
            (first, count)
        } else {
            // request_id 0 (the broker could not read the id: that request
            // will time out), or a second reply to a resent request.
            self.stats.unmatched_replies += 1;
            return;
        };
        if let Some(e) = codec::reply_error(&rep) {
            self.settle_all(first, count, &e);
            return;
        }
        let results = match rep.body {
            Some(pb::reply::Body::Publish(p)) if p.results.len() == count as usize => p.results,
            _ => {
                self.stats.bad_replies += 1;
                let e = Error::Protocol(format!(
                    "reply to request {} is not a PublishReply with {} results",
                    rid, count
                ));
                self.settle_all(first, count, &e);
                return;
            }
        };
        for (i, res) in results.iter().enumerate() {
            let t = first + i as u64;
            let dup = res.error == pb::ErrorCode::ErrDuplicate as i32;
            let r = if res.error == 0 || (dup && !self.dup_error) {
                Ok(Ack {
                    seq: res.seq,
                    aggregate_seq: res.aggregate_seq,
                    batch_id: res.batch_id,
                    duplicate: dup,
                })
            } else {
                Err(codec::event_error(res.error, res, rid))
            };
            self.settle(t, r);
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.abandon();
    }
}
