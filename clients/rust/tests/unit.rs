//! Unit tests: the codec against the worked example of PROTOCOL.md
//! section 13, garbage input, the subscriber's gap rules against a fake
//! broker (no sockets), and the publisher against a scripted fake broker on
//! a loopback socket.

use prost::Message;
use snapbus::codec;
use snapbus::engine::{Engine, Item, Page, Transport};
use snapbus::{pb, AckLevel, Error, Event, Publisher, Scope};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

// ------------------------------------------------------------------ codec

#[test]
fn request_bytes_match_the_worked_example() {
    let ev = Event::new("e3/42", "Commit", vec![1u8, 2]).source_pos(100);
    let mut evs = Vec::new();
    codec::append_event(&mut evs, &ev, "", 0, 0);
    let req = codec::encode_publish(1, AckLevel::Sequenced.wire(), &evs);
    assert_eq!(
        req,
        hex(
            "08 01 10 01 22 1b 08 01 12 17 0a 05 65 33 2f 34 32 12 06 43 6f 6d 6d 69
             74 1a 02 01 02 28 64 50 01"
        )
    );
    // And a standard decoder reads what the hand-written encoder wrote,
    // with every optional field.
    let ev = Event::new("a", "T", b"xyz".to_vec())
        .event_id("id-1")
        .source_pos(0)
        .caused_by(7)
        .client_ts_ms(99);
    let mut evs = Vec::new();
    codec::append_event(&mut evs, &ev, "prod", 5, 99);
    let r = pb::Request::decode(&codec::encode_publish(300, 2, &evs)[..]).unwrap();
    assert_eq!((r.version, r.request_id), (1, 300));
    let p = match r.body {
        Some(pb::request::Body::Publish(p)) => p,
        _ => panic!("no publish"),
    };
    assert_eq!(p.ack, 2);
    let e = &p.events[0];
    assert_eq!((e.aggregate.as_str(), e.r#type.as_str()), ("a", "T"));
    assert_eq!(
        (e.payload.as_slice(), e.event_id.as_str()),
        (&b"xyz"[..], "id-1")
    );
    assert_eq!((e.source_pos, e.has_source_pos, e.caused_by), (0, true, 7));
    assert_eq!(
        (e.producer_id.as_str(), e.producer_seq, e.client_ts_ms),
        ("prod", 5, 99)
    );
}

#[test]
fn reply_and_batch_of_the_worked_example() {
    let frames = vec![hex("08 01 10 01 32 08 08 01 12 04 10 01 18 01")];
    let (rep, rest) = codec::decode_reply(&frames).unwrap();
    assert!(rest.is_empty() && codec::reply_error(&rep).is_none());
    match rep.body {
        Some(pb::reply::Body::Publish(p)) => {
            assert_eq!((p.results[0].seq, p.results[0].aggregate_seq), (1, 1))
        }
        _ => panic!("no publish reply"),
    }
    let topic = hex("65 33 2f 34 32 00");
    let batch = hex(
        "08 01 12 05 65 33 2f 34 32 18 01 20 01 28 01 30 01 38 64 40 a8 c7 8b 8f
         a1 34 50 01 60 01 5a 14 08 01 10 01 22 06 43 6f 6d 6d 69 74 2a 02 01 02
         38 64 60 01",
    );
    let b = codec::decode_live(&[topic, batch.clone()]).unwrap();
    let m = snapbus::Batch::from(b);
    assert_eq!(
        (m.aggregate.as_str(), m.batch_id, m.first_seq, m.last_seq),
        ("e3/42", 1, 1, 1)
    );
    assert_eq!(m.source_pos, Some(100));
    assert_eq!(m.events[0].aggregate, "e3/42");
    assert_eq!(m.events[0].event_type, "Commit");
    assert_eq!(m.events[0].payload, vec![1, 2]);
    // The header alone (first 30 bytes) is what headers_only returns.
    let h = codec::decode_batch(&batch[..30], true).unwrap();
    assert_eq!((h.batch_id, h.last_seq, h.events.len()), (1, 1, 0));
    // A topic that does not match the batch is refused.
    assert!(matches!(
        codec::decode_live(&[b"e3/4\0".to_vec(), batch]),
        Err(Error::Protocol(_))
    ));
}

#[test]
fn refusals_are_typed() {
    let frames = vec![hex(
        "08 01 10 01 18 08 22 1c 75 6e 73 75 70 70 6f 72 74 65 64 20 70 72 6f 74
         6f 63 6f 6c 20 76 65 72 73 69 6f 6e",
    )];
    let (rep, _) = codec::decode_reply(&frames).unwrap();
    match codec::reply_error(&rep) {
        Some(Error::BadVersion {
            refusal,
            broker_version,
        }) => {
            assert_eq!(broker_version, 1);
            assert_eq!(refusal.scope, Scope::Request);
            assert_eq!(refusal.detail, "unsupported protocol version");
        }
        e => panic!("{:?}", e),
    }
    for code in 1..=11 {
        let e = Error::from_code(code, Default::default());
        assert_eq!(e.code(), Some(code));
    }
    assert!(matches!(
        Error::from_code(99, Default::default()),
        Error::Unknown { code: 99, .. }
    ));
    let rep = pb::Reply {
        version: 1,
        request_id: 5,
        error: 9,
        body: Some(pb::reply::Body::Fetch(pb::FetchReply {
            retained_first_seq: 40,
            retained_first_batch_id: 4,
            ..Default::default()
        })),
        ..Default::default()
    };
    assert!(matches!(
        codec::reply_error(&rep),
        Some(Error::OutOfRetention {
            retained_first_seq: 40,
            retained_first_batch_id: 4,
            ..
        })
    ));
}

#[test]
fn garbage_never_panics() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let good = hex(
        "08 01 12 05 65 33 2f 34 32 18 01 20 01 28 01 30 01 38 64 40 a8 c7 8b 8f
         a1 34 50 01 60 01 5a 14 08 01 10 01 22 06 43 6f 6d 6d 69 74 2a 02 01 02
         38 64 60 01",
    );
    for i in 0..20000 {
        let mut b = if i % 2 == 0 {
            good.clone()
        } else {
            (0..(next() % 64)).map(|_| next() as u8).collect()
        };
        if !b.is_empty() {
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            b.truncate((next() as usize) % (b.len() + 1));
        }
        let _ = codec::decode_live(&[b"e3/42\0".to_vec(), b.clone()]);
        let _ = codec::decode_batch(&b, i % 3 == 0);
        let _ = codec::decode_reply(&[b.clone()]);
        let _ = codec::decode_reply(&[Vec::new(), b]);
    }
    assert!(codec::decode_reply(&[]).is_err());
    assert!(codec::decode_live(&[b"x".to_vec()]).is_err());
}

// ------------------------------------------------------ the gap rules

/// A broker's retention, served by the fetch rules of PROTOCOL.md 9.
struct Fake {
    ring: Vec<pb::SnapshotBatch>, // every batch ever published, by id
    evicted_below: u64,           // batch ids below this are gone
    epoch: u64,
    last_topic_seq: std::collections::HashMap<String, u64>,
    seq: u64,
    fetches: usize,
    max_batches: u32,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            ring: Vec::new(),
            evicted_below: 1,
            epoch: 77,
            last_topic_seq: Default::default(),
            seq: 0,
            fetches: 0,
            max_batches: 1000,
        }
    }
    /// Publishes a batch of `n` events of `agg`; returns it.
    fn publish(&mut self, agg: &str, n: u64) -> pb::SnapshotBatch {
        let first = self.seq + 1;
        self.seq += n;
        let prev = self
            .last_topic_seq
            .insert(agg.to_string(), self.seq)
            .unwrap_or(0);
        let b = pb::SnapshotBatch {
            version: 1,
            aggregate: agg.to_string(),
            batch_id: self.ring.len() as u64 + 1,
            first_seq: first,
            last_seq: self.seq,
            prev_last_seq: prev,
            events: (first..=self.seq)
                .map(|s| pb::SequencedEvent {
                    seq: s,
                    r#type: "T".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        self.ring.push(b.clone());
        b
    }
    fn last_id(&self) -> u64 {
        self.ring.len() as u64
    }
    fn retained_first_seq(&self) -> u64 {
        self.ring
            .iter()
            .find(|b| b.batch_id >= self.evicted_below)
            .map_or(self.seq + 1, |b| b.first_seq)
    }
}

impl Transport for Fake {
    fn hello(&mut self) -> snapbus::Result<pb::HelloReply> {
        Ok(pb::HelloReply {
            last_seq: self.seq,
            last_batch_id: self.last_id(),
            epoch: self.epoch,
            low_seq: self.seq + 1,
            ..Default::default()
        })
    }
    fn fetch(&mut self, f: &pb::Fetch) -> snapbus::Result<Page> {
        self.fetches += 1;
        let rfs = self.retained_first_seq();
        let rfb = self.evicted_below;
        let oor = || Error::OutOfRetention {
            refusal: Default::default(),
            retained_first_seq: rfs,
            retained_first_batch_id: rfb,
        };
        if f.after_batch_id == 0 && f.from_seq != 0 && f.from_seq < rfs {
            return Err(oor());
        }
        if f.after_batch_id != 0 && f.after_batch_id + 1 < rfb && f.after_batch_id < self.last_id()
        {
            return Err(oor());
        }
        let max = if f.max_batches == 0 {
            self.max_batches
        } else {
            f.max_batches.min(self.max_batches)
        };
        let mut out = Vec::new();
        let mut last = f.after_batch_id;
        let mut more = false;
        for b in self
            .ring
            .iter()
            .filter(|b| b.batch_id > f.after_batch_id && b.batch_id >= rfb)
        {
            if out.len() as u32 >= max {
                more = true;
                break;
            }
            last = b.batch_id;
            let m = if f.exact {
                b.aggregate == f.prefix
            } else {
                b.aggregate.starts_with(&f.prefix)
            };
            if m && b.last_seq >= f.from_seq && (f.to_seq == 0 || b.first_seq <= f.to_seq) {
                let mut c = b.clone();
                if f.headers_only {
                    c.events.clear();
                }
                out.push(c);
            }
        }
        Ok(Page {
            reply: pb::FetchReply {
                count: out.len() as u32,
                last_batch_id: last,
                more,
                retained_first_seq: rfs,
                retained_first_batch_id: rfb,
                last_seq: self.seq,
                last_batch_id_published: self.last_id(),
                epoch: self.epoch,
                cursor_low_seq: self
                    .ring
                    .get(last as usize)
                    .map_or(self.seq + 1, |b| b.first_seq),
                end_batch_id: 0,
            },
            batches: out,
        })
    }
}

/// The batches (aggregate, last_seq) and other items the engine queued.
fn drain(e: &mut Engine) -> (Vec<(String, u64, bool)>, Vec<String>) {
    let (mut b, mut other) = (Vec::new(), Vec::new());
    while let Some(i) = e.out.pop_front() {
        match i {
            Item::Batch(x) => b.push((x.aggregate, x.last_seq, x.filled)),
            Item::Loss(l) => other.push(format!(
                "loss {} {}..{}",
                l.aggregate, l.first_seq, l.last_seq
            )),
            Item::Restart(r) => other.push(format!("restart kept={}", r.counters_kept)),
            Item::Position(_) => {}
        }
    }
    (b, other)
}

fn started(f: &mut Fake, subs: &[(&str, bool)], resume: u64) -> Engine {
    let mut e = Engine::new(subs.iter().map(|(n, x)| (n.to_string(), *x)).collect());
    let h = f.hello().unwrap();
    e.start(f, &h, resume).unwrap();
    e
}

#[test]
fn in_order_and_duplicates() {
    let mut f = Fake::new();
    f.publish("a/1", 2); // before the start
    let mut e = started(&mut f, &[("a/", false)], 0);
    let b1 = f.publish("a/1", 1);
    let b2 = f.publish("a/2", 1);
    let b3 = f.publish("a/1", 3);
    for b in [b1.clone(), b2, b3, b1] {
        e.on_live(&mut f, b).unwrap();
    }
    let (got, other) = drain(&mut e);
    assert_eq!(
        got,
        vec![
            ("a/1".into(), 3, false),
            ("a/2".into(), 4, false),
            ("a/1".into(), 7, false)
        ]
    );
    assert!(other.is_empty());
    assert_eq!(e.stats.duplicates, 1);
    assert_eq!(f.fetches, 0, "no fetch when nothing is missing");
}

#[test]
fn missed_middle_batch_is_filled() {
    let mut f = Fake::new();
    let mut e = started(&mut f, &[("", false)], 0);
    let b1 = f.publish("x", 1);
    let _b2 = f.publish("x", 2); // dropped on the way
    let _b3 = f.publish("y", 1); // dropped too (another topic)
    let b4 = f.publish("x", 1);
    e.on_live(&mut f, b1).unwrap();
    e.on_live(&mut f, b4).unwrap();
    let (got, other) = drain(&mut e);
    assert_eq!(
        got,
        vec![
            ("x".into(), 1, false),
            ("x".into(), 3, true),
            ("y".into(), 4, true),
            ("x".into(), 5, false)
        ]
    );
    assert!(other.is_empty());
    assert_eq!(e.stats.gaps, 1);
}

#[test]
fn lost_last_batch_is_found_by_the_probe() {
    let mut f = Fake::new();
    let mut e = started(&mut f, &[("k/", false), ("z", true)], 0);
    let b1 = f.publish("k/1", 1);
    f.publish("k/1", 1); // the last batch of k/1: nothing after it shows the gap
    f.publish("z", 1); // exact subscription, also missed
    f.publish("zz", 1); // not subscribed
    e.on_live(&mut f, b1).unwrap();
    e.probe_now(&mut f, true).unwrap();
    let (got, _) = drain(&mut e);
    assert_eq!(
        got,
        vec![
            ("k/1".into(), 1, false),
            ("k/1".into(), 2, true),
            ("z".into(), 3, true)
        ]
    );
    assert_eq!(e.cursor, 4);
}

#[test]
fn new_aggregate_with_missed_predecessor() {
    let mut f = Fake::new();
    f.publish("n", 1); // before the start
    let mut e = started(&mut f, &[("", false)], 0);
    f.publish("n", 1); // missed
    let b = f.publish("n", 1);
    e.on_live(&mut f, b).unwrap();
    let (got, _) = drain(&mut e);
    assert_eq!(got, vec![("n".into(), 2, true), ("n".into(), 3, false)]);
}

#[test]
fn mass_gap_filled_in_few_fetches() {
    let mut f = Fake::new();
    let mut e = started(&mut f, &[("m/", false)], 0);
    let mut last = None;
    for i in 0..2000 {
        last = Some(f.publish(&format!("m/{}", i % 100), 1));
    }
    e.on_live(&mut f, last.unwrap()).unwrap();
    let (got, _) = drain(&mut e);
    assert_eq!(got.len(), 2000);
    assert!(got.windows(2).all(|w| w[0].1 < w[1].1));
    assert!(f.fetches <= 10, "{} fetches", f.fetches);
}

#[test]
fn resume_from_a_saved_seq() {
    let mut f = Fake::new();
    for i in 0..10 {
        f.publish(if i % 2 == 0 { "r/a" } else { "r/b" }, 1);
    }
    let mut e = started(&mut f, &[("r/", false)], 6);
    let (got, _) = drain(&mut e);
    let seqs: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(seqs, vec![6, 7, 8, 9, 10]);
    // Live copies of what the catch-up returned are dropped.
    let b = f.ring[8].clone();
    e.on_live(&mut f, b).unwrap();
    assert!(drain(&mut e).0.is_empty());
}

#[test]
fn out_of_retention_is_a_loss_then_carries_on() {
    let mut f = Fake::new();
    for _ in 0..10 {
        f.publish("o", 1);
    }
    f.evicted_below = 6; // batches 1..5 (seqs 1..5) are gone
    let mut e = started(&mut f, &[("o", true)], 2);
    let (got, other) = drain(&mut e);
    assert_eq!(other, vec!["loss o 2..5".to_string()]);
    assert_eq!(
        got.iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10]
    );
    // A gap whose batches were evicted before the fill.
    f.publish("o", 1);
    f.publish("o", 1);
    let b = f.publish("o", 1);
    f.evicted_below = 13;
    e.on_live(&mut f, b).unwrap();
    let (got, other) = drain(&mut e);
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), vec![13]);
    assert_eq!(other.len(), 2, "{:?}", other);
    assert!(other.iter().any(|o| o == "loss o 11..12"), "{:?}", other);
}

#[test]
fn restart_without_data_starts_again() {
    let mut f = Fake::new();
    let mut e = started(&mut f, &[("", false)], 0);
    for _ in 0..5 {
        let b = f.publish("s", 1);
        e.on_live(&mut f, b).unwrap();
    }
    drain(&mut e);
    // A new broker on an empty data directory.
    let mut g = Fake::new();
    g.epoch = 78;
    g.publish("s", 1);
    g.publish("t", 1);
    e.probe_now(&mut g, true).unwrap();
    assert!(e.restarted && e.reset);
    e.probe_now(&mut g, true).unwrap();
    let (got, other) = drain(&mut e);
    assert_eq!(other, vec!["restart kept=false".to_string()]);
    assert_eq!(got, vec![("s".into(), 1, true), ("t".into(), 2, true)]);
}

// ----------------------------------------------- publisher vs a fake broker

/// A ROUTER on loopback that answers hello, then follows `script` for each
/// publish it receives: returns (frames to send back) for (n-th publish, request).
fn fake_broker(
    script: impl Fn(usize, &pb::Request) -> Vec<Vec<Vec<u8>>> + Send + 'static,
) -> (String, std::thread::JoinHandle<usize>) {
    let ctx = zmq::Context::new();
    let r = ctx.socket(zmq::ROUTER).unwrap();
    r.bind("tcp://127.0.0.1:*").unwrap();
    let ep = r.get_last_endpoint().unwrap().unwrap();
    let h = std::thread::spawn(move || {
        let _ctx = ctx;
        let mut n = 0;
        // Ends when no request came for 3 s after the last one.
        while r.poll(zmq::POLLIN, 3000).unwrap() > 0 {
            let mut fr = r.recv_multipart(0).unwrap();
            let body = fr.pop().unwrap();
            let req = pb::Request::decode(&body[..]).unwrap();
            let replies = match req.body {
                Some(pb::request::Body::Hello(_)) => vec![vec![pb::Reply {
                    version: 1,
                    request_id: req.request_id,
                    body: Some(pb::reply::Body::Hello(pb::HelloReply {
                        max_message_bytes: 1 << 20,
                        max_events_per_request: 100,
                        epoch: 5,
                        ..Default::default()
                    })),
                    ..Default::default()
                }
                .encode_to_vec()]],
                _ => {
                    n += 1;
                    script(n, &req)
                }
            };
            for rep in replies {
                let mut m = vec![fr[0].clone()];
                m.extend(rep);
                r.send_multipart(m, 0).unwrap();
            }
        }
        n
    });
    (ep, h)
}

fn publish_reply(req: &pb::Request, results: Vec<pb::EventResult>) -> Vec<Vec<u8>> {
    vec![pb::Reply {
        version: 1,
        request_id: req.request_id,
        body: Some(pb::reply::Body::Publish(pb::PublishReply {
            ack: 1,
            results,
        })),
        ..Default::default()
    }
    .encode_to_vec()]
}

#[test]
fn unanswered_request_is_resent_and_the_original_seq_comes_back() {
    let (ep, h) = fake_broker(|n, req| {
        if n == 1 {
            return vec![]; // the reply is "lost"
        }
        let ev = match &req.body {
            Some(pb::request::Body::Publish(p)) => p.events[0].clone(),
            _ => panic!(),
        };
        assert_eq!((ev.producer_id.as_str(), ev.producer_seq), ("p1", 7));
        vec![publish_reply(
            req,
            vec![pb::EventResult {
                error: pb::ErrorCode::ErrDuplicate as i32,
                seq: 42,
                aggregate_seq: 3,
                ..Default::default()
            }],
        )]
    });
    let mut p = Publisher::builder(ep)
        .producer_id("p1")
        .producer_seq_start(7)
        .timeout(Duration::from_millis(300))
        .connect()
        .unwrap();
    let ack = p
        .publish_wait(&Event::new("a", "T", b"x".to_vec()))
        .unwrap();
    assert_eq!((ack.seq, ack.aggregate_seq, ack.duplicate), (42, 3, true));
    assert_eq!(p.stats().resends, 1);
    drop(p);
    assert_eq!(h.join().unwrap(), 2);
}

#[test]
fn not_resent_without_dedup_fields_and_times_out() {
    let (ep, h) = fake_broker(|_, _| vec![]);
    let mut p = Publisher::builder(ep)
        .timeout(Duration::from_millis(200))
        .connect()
        .unwrap();
    match p.publish_wait(&Event::new("a", "T", Vec::new())) {
        Err(Error::Timeout(_)) => {}
        r => panic!("{:?}", r),
    }
    assert_eq!(p.stats().resends, 0);
    drop(p);
    assert_eq!(h.join().unwrap(), 1);
}

#[test]
fn window_full_is_would_block_and_bad_replies_are_counted() {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let o2 = outcomes.clone();
    let (ep, h) = fake_broker(|n, req| {
        let mut v = vec![vec![b"garbage".to_vec()], vec![vec![]]];
        if n >= 2 {
            let k = match &req.body {
                Some(pb::request::Body::Publish(p)) => p.events.len(),
                _ => 0,
            };
            // A reply with the wrong number of results, then a per-event refusal.
            if n == 2 {
                v.push(publish_reply(req, vec![]));
            } else {
                v.push(publish_reply(
                    req,
                    (0..k)
                        .map(|_| pb::EventResult {
                            error: 1,
                            detail: "invalid".into(),
                            ..Default::default()
                        })
                        .collect(),
                ));
            }
        }
        v
    });
    let mut p = Publisher::builder(ep)
        .window(1)
        .batch_events(2)
        .send_timeout(Duration::from_millis(300))
        .on_result(move |o| o2.lock().unwrap().push((o.ticket.0, o.result.clone())))
        .connect()
        .unwrap();
    let ev = Event::new("a", "T", Vec::new());
    // Request 1 goes at once; the next two fill the open batch; the fourth
    // needs the window, which the silent first request holds.
    p.try_publish(&ev).unwrap();
    p.try_publish(&ev).unwrap();
    p.try_publish(&ev).unwrap();
    let before = p.stats();
    match p.try_publish(&ev) {
        Err(Error::WouldBlock(_)) => {}
        r => panic!("{:?}", r),
    }
    assert_eq!(p.stats().events, before.events, "nothing was taken");
    match p.publish(&ev) {
        Err(Error::Timeout(_)) => {}
        r => panic!("{:?}", r),
    }
    assert!(p.stats().bad_replies >= 1);
    drop(p);
    h.join().unwrap();
    let o = outcomes.lock().unwrap();
    assert_eq!(o.len(), 3, "{:?}", o);
}

#[test]
fn per_event_refusal_is_typed() {
    let (ep, h) = fake_broker(|_, req| {
        vec![publish_reply(
            req,
            vec![pb::EventResult {
                error: pb::ErrorCode::ErrTooLarge as i32,
                detail: "too large".into(),
                ..Default::default()
            }],
        )]
    });
    let mut p = Publisher::connect(ep).unwrap();
    match p.publish_wait(&Event::new("a", "T", Vec::new())) {
        Err(Error::TooLarge(r)) => assert_eq!(r.scope, Scope::Event),
        r => panic!("{:?}", r),
    }
    drop(p);
    h.join().unwrap();
}
