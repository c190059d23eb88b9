//! The lossless subscriber: a SUB socket on the broker's pub socket, a
//! DEALER on its query socket for gap fill, catch-up and the header probe.

use crate::codec;
use crate::conn::{self, SockOpts};
use crate::engine::{Engine, Item, Page, SubscriberStats, Transport};
use crate::error::{Error, Loss, Restart, Result};
use crate::model::{Batch, CurveKeys};
use crate::pb;
use std::time::{Duration, Instant};

/// What [`Subscriber::recv`] returns, in stream order.
#[derive(Debug)]
pub enum Delivery {
    /// The next batch of a subscribed aggregate: once, in seq order per
    /// aggregate, without a gap.
    Batch(Batch),
    /// Batches the broker no longer retains: they cannot be delivered. The
    /// subscriber carries on with what follows.
    Loss(Loss),
    /// The broker restarted (a new epoch).
    Restart(Restart),
}

/// Options of a [`Subscriber`]; see each setter.
pub struct SubscriberBuilder {
    pub_endpoint: String,
    query_endpoint: String,
    subs: Vec<(String, bool)>,
    resume_from_seq: u64,
    rcvhwm: i32,
    rcvbuf: i32,
    probe: Duration,
    fetch_timeout: Duration,
    fetch_retries: u32,
    curve: Option<CurveKeys>,
    context: Option<zmq::Context>,
}

impl SubscriberBuilder {
    /// Every aggregate whose name starts with `prefix` ("" = all).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subs.push((prefix.into(), false));
        self
    }
    /// Exactly the aggregate named `name`.
    pub fn exact(mut self, name: impl Into<String>) -> Self {
        self.subs.push((name.into(), true));
        self
    }
    /// Deliver first every retained batch holding a seq at or above `seq`
    /// (a position saved from [`Subscriber::position`]), then live
    /// batches. 0 (the default): live from the newest batch at start.
    pub fn resume_from_seq(mut self, seq: u64) -> Self {
        self.resume_from_seq = seq;
        self
    }
    /// The SUB socket's receive high-water mark (100,000 batches); past
    /// it the broker drops batches for this subscriber and the fill takes
    /// over.
    pub fn rcvhwm(mut self, n: i32) -> Self {
        self.rcvhwm = n;
        self
    }
    /// The SUB socket's kernel receive buffer in bytes (0: the system's).
    pub fn rcvbuf(mut self, bytes: i32) -> Self {
        self.rcvbuf = bytes;
        self
    }
    /// The header probe's period (500 ms), docs/SUBSCRIBING.md section 3.
    pub fn probe_interval(mut self, d: Duration) -> Self {
        self.probe = d;
        self
    }
    /// A fetch or hello without an answer this long is asked again (5 s),
    /// `retries` times (3), then [`Error::Timeout`].
    pub fn fetch_timeout(mut self, d: Duration, retries: u32) -> Self {
        self.fetch_timeout = d;
        self.fetch_retries = retries;
        self
    }
    /// CURVE keys, for both sockets.
    pub fn curve(mut self, keys: CurveKeys) -> Self {
        self.curve = Some(keys);
        self
    }
    pub fn context(mut self, ctx: zmq::Context) -> Self {
        self.context = Some(ctx);
        self
    }

    /// Connects and subscribes. The start point is fixed by a hello on
    /// the query socket at the first `recv` (or [`Subscriber::start`]).
    pub fn connect(self) -> Result<Subscriber> {
        let mut subs = self.subs;
        if subs.is_empty() {
            subs.push((String::new(), false));
        }
        for (name, exact) in &subs {
            if name.contains('\0') || (*exact && name.is_empty()) {
                return Err(Error::Config(format!(
                    "subscription {:?}: names cannot contain 0x00, and an exact one cannot be empty",
                    name
                )));
            }
        }
        let ctx = self.context.unwrap_or_default();
        let sub = conn::socket(
            &ctx,
            zmq::SUB,
            &self.pub_endpoint,
            &SockOpts {
                sndhwm: 1000,
                rcvhwm: self.rcvhwm,
                linger_ms: 0,
                rcvbuf: self.rcvbuf,
                curve: &self.curve,
            },
        )?;
        for (name, exact) in &subs {
            let mut topic = name.as_bytes().to_vec();
            if *exact {
                topic.push(0);
            }
            sub.set_subscribe(&topic)?;
        }
        let q = conn::socket(
            &ctx,
            zmq::DEALER,
            &self.query_endpoint,
            &SockOpts {
                sndhwm: 1000,
                rcvhwm: 1000,
                linger_ms: 0,
                rcvbuf: 0,
                curve: &self.curve,
            },
        )?;
        Ok(Subscriber {
            _ctx: ctx,
            sub,
            q: Query {
                sock: q,
                rid: 0,
                timeout: self.fetch_timeout,
                retries: self.fetch_retries,
                timeouts: 0,
            },
            engine: Engine::new(subs),
            resume_from_seq: self.resume_from_seq,
            started: false,
            probe: self.probe,
            last_rx: Instant::now(),
            next_probe: Instant::now(),
            need_probe: false,
            position: 0,
        })
    }
}

/// The query socket as the engine's transport.
struct Query {
    sock: zmq::Socket,
    rid: u64,
    timeout: Duration,
    retries: u32,
    timeouts: u64,
}

impl Query {
    fn request<T>(
        &mut self,
        what: &str,
        encode: impl Fn(u64) -> Vec<u8>,
        parse: impl Fn(&pb::Reply, &[Vec<u8>]) -> Result<T>,
    ) -> Result<T> {
        for attempt in 0..=self.retries {
            if attempt > 0 {
                self.timeouts += 1;
            }
            self.rid += 1;
            let rid = self.rid;
            let data = encode(rid);
            let deadline = Instant::now() + self.timeout;
            match self.sock.send(&data[..], zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => {
                    self.sock.poll(zmq::POLLOUT, conn::ms_until(deadline))?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            loop {
                let left = conn::ms_until(deadline);
                if left == 0 || self.sock.poll(zmq::POLLIN, left)? == 0 {
                    break;
                }
                let frames = self.sock.recv_multipart(zmq::DONTWAIT)?;
                let (rep, rest) = match codec::decode_reply(&frames) {
                    Ok(x) => x,
                    Err(_) => continue, // counted by the caller as a timeout if nothing else comes
                };
                if rep.request_id != rid {
                    continue; // a late reply to an earlier try
                }
                return parse(&rep, rest);
            }
        }
        Err(Error::Timeout(format!(
            "no {} reply from the query socket within {:?}, {} tries",
            what,
            self.timeout,
            self.retries + 1
        )))
    }
}

impl Transport for Query {
    fn hello(&mut self) -> Result<pb::HelloReply> {
        let client = concat!("snapbus-rust ", env!("CARGO_PKG_VERSION"), " sub");
        self.request(
            "hello",
            |rid| codec::encode_hello(rid, client),
            |rep, _| {
                if let Some(e) = codec::reply_error(rep) {
                    return Err(e);
                }
                match &rep.body {
                    Some(pb::reply::Body::Hello(h)) => Ok(h.clone()),
                    _ => Err(Error::Protocol("hello reply without a HelloReply".into())),
                }
            },
        )
    }

    fn fetch(&mut self, f: &pb::Fetch) -> Result<Page> {
        let headers = f.headers_only;
        self.request(
            "fetch",
            |rid| codec::encode_fetch(rid, f),
            |rep, rest| {
                if let Some(e) = codec::reply_error(rep) {
                    return Err(e);
                }
                let reply = match &rep.body {
                    Some(pb::reply::Body::Fetch(r)) => r.clone(),
                    _ => return Err(Error::Protocol("fetch reply without a FetchReply".into())),
                };
                if rest.len() != reply.count as usize {
                    return Err(Error::Protocol(format!(
                        "fetch reply: count {} but {} batch frames",
                        reply.count,
                        rest.len()
                    )));
                }
                let batches = rest
                    .iter()
                    .map(|x| codec::decode_batch(x, headers))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Page { reply, batches })
            },
        )
    }
}

/// Receives snapshot batches without loss.
///
/// ```no_run
/// use snapbus::{Delivery, Subscriber};
/// let mut sub = Subscriber::builder("tcp://127.0.0.1:7702", "tcp://127.0.0.1:7703")
///     .prefix("e3/")
///     .connect()?;
/// for item in &mut sub {
///     match item? {
///         Delivery::Batch(b) => println!("{} {}..{}", b.aggregate, b.first_seq, b.last_seq),
///         Delivery::Loss(l) => eprintln!("lost: {}", l),
///         Delivery::Restart(r) => eprintln!("broker restarted: {:?}", r),
///     }
/// }
/// # Ok::<(), snapbus::Error>(())
/// ```
///
/// Not thread-safe: use it from one thread.
pub struct Subscriber {
    _ctx: zmq::Context,
    sub: zmq::Socket,
    q: Query,
    engine: Engine,
    resume_from_seq: u64,
    started: bool,
    probe: Duration,
    last_rx: Instant,
    next_probe: Instant,
    need_probe: bool,
    position: u64,
}

impl Subscriber {
    /// Options for the broker's pub and query endpoints.
    pub fn builder(
        pub_endpoint: impl Into<String>,
        query_endpoint: impl Into<String>,
    ) -> SubscriberBuilder {
        SubscriberBuilder {
            pub_endpoint: pub_endpoint.into(),
            query_endpoint: query_endpoint.into(),
            subs: Vec::new(),
            resume_from_seq: 0,
            rcvhwm: 100_000,
            rcvbuf: 0,
            probe: Duration::from_millis(500),
            fetch_timeout: Duration::from_secs(5),
            fetch_retries: 3,
            curve: None,
            context: None,
        }
    }

    /// Says hello and fixes the start point (done by the first `recv` if
    /// not called before). With a resume seq, the catch-up runs here.
    pub fn start(&mut self) -> Result<()> {
        if self.started {
            return Ok(());
        }
        let h = self.q.hello()?;
        self.engine.start(&mut self.q, &h, self.resume_from_seq)?;
        self.started = true;
        let now = Instant::now();
        self.last_rx = now;
        self.next_probe = now + self.probe;
        Ok(())
    }

    /// A seq to save and later pass to
    /// [`SubscriberBuilder::resume_from_seq`]: every batch not returned yet
    /// (and not reported lost) holds only seqs at or above it. 0: none yet.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Counters.
    pub fn stats(&self) -> SubscriberStats {
        let mut s = self.engine.stats;
        s.fetch_timeouts = self.q.timeouts;
        s
    }

    /// The broker's epoch, as last seen.
    pub fn epoch(&self) -> u64 {
        self.engine.epoch
    }

    /// The next delivery, waiting up to `timeout` (None: until there is
    /// one). `Ok(None)` on timeout. Errors: [`Error::Timeout`] when the
    /// query socket does not answer (the subscriber stays usable: the next
    /// call goes on), [`Error::Zmq`].
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Delivery>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        if !self.started {
            self.start()?;
        }
        loop {
            while let Some(item) = self.engine.out.pop_front() {
                match item {
                    Item::Batch(b) => return Ok(Some(Delivery::Batch(b))),
                    Item::Loss(l) => return Ok(Some(Delivery::Loss(l))),
                    Item::Restart(r) => return Ok(Some(Delivery::Restart(r))),
                    Item::Position(p) => self.position = p,
                }
            }
            if self.engine.reset {
                self.engine.reset = false;
                self.discard_live()?;
            }
            if self.engine.restarted || self.need_probe {
                self.engine.restarted = false;
                self.need_probe = false;
                self.run_probe(true)?;
                continue;
            }
            let now = Instant::now();
            if now >= self.next_probe {
                self.next_probe = now + self.probe;
                let idle = now.duration_since(self.last_rx) >= self.probe;
                self.run_probe(idle)?;
                continue;
            }
            let mut wait = self.next_probe - now;
            if let Some(d) = deadline {
                if d <= now {
                    return Ok(None);
                }
                wait = wait.min(d - now);
            }
            let ms = wait.as_millis() as i64 + 1;
            if self.sub.poll(zmq::POLLIN, ms)? == 0 {
                continue;
            }
            self.last_rx = Instant::now();
            // Read what is there while nothing is queued for the application.
            while self.engine.out.is_empty() && !self.engine.restarted {
                let frames = match self.sub.recv_multipart(zmq::DONTWAIT) {
                    Ok(f) => f,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(e.into()),
                };
                let b = match codec::decode_live(&frames) {
                    Ok(b) => b,
                    Err(_) => {
                        self.engine.stats.malformed += 1;
                        continue;
                    }
                };
                if b.batch_id < self.engine.newest_live {
                    // Ids went back on one connection: a restart? Ask.
                    self.need_probe = true;
                }
                if let Err(e) = self.engine.on_live(&mut self.q, b) {
                    self.need_probe = true;
                    return Err(e);
                }
            }
        }
    }

    fn run_probe(&mut self, idle: bool) -> Result<()> {
        match self.engine.probe_now(&mut self.q, idle) {
            Ok(()) => Ok(()),
            Err(e) => {
                // What the probe did not finish, the next one does.
                self.need_probe = true;
                Err(e)
            }
        }
    }

    fn discard_live(&mut self) -> Result<()> {
        loop {
            match self.sub.recv_multipart(zmq::DONTWAIT) {
                Ok(_) => self.engine.stats.discarded += 1,
                Err(zmq::Error::EAGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Blocks for each delivery; ends never (errors are items: a timeout of the
/// query socket is an `Err` item after which iteration can go on).
impl Iterator for Subscriber {
    type Item = Result<Delivery>;
    fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            match self.recv(Some(Duration::from_secs(3600))) {
                Ok(Some(d)) => return Some(Ok(d)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
