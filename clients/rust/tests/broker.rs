//! The Rust client against the real snapbusd on loopback, and next to the C
//! command-line tool.

mod harness;

use harness::{cli, Broker};
use snapbus::{AckLevel, Delivery, Error, Event, Publisher, Scope, Subscriber};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// Receives until `want` events arrived (or the generous deadline);
/// returns the batches.
fn collect(sub: &mut Subscriber, want: usize) -> Vec<snapbus::Batch> {
    let deadline = Instant::now() + LONG;
    let mut out = Vec::new();
    let mut n = 0;
    while n < want {
        assert!(Instant::now() < deadline, "only {} of {} events", n, want);
        match sub.recv(Some(Duration::from_millis(500))).unwrap() {
            Some(Delivery::Batch(b)) => {
                n += b.events.len();
                out.push(b);
            }
            Some(d) => panic!("unexpected {:?}", d),
            None => {}
        }
    }
    out
}

/// Every seq once, and each aggregate's events in order without a gap.
fn check_stream(batches: &[snapbus::Batch]) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut agg: HashMap<&str, u64> = HashMap::new();
    for b in batches {
        for e in &b.events {
            let a = agg.entry(&e.aggregate).or_insert(0);
            assert_eq!(e.aggregate_seq, *a + 1, "order of {}", e.aggregate);
            *a = e.aggregate_seq;
            seqs.push(e.seq);
        }
    }
    let mut s = seqs.clone();
    s.sort_unstable();
    s.dedup();
    assert_eq!(s.len(), seqs.len(), "a seq came twice");
    seqs
}

#[test]
fn rust_publishes_c_subscribes() {
    let b = Broker::start(&["--default-delay-ms", "0"]);
    let mut child = cli()
        .args(["sub", "-e", &b.pubs, "-Q", &b.query, "-p", "r2c/", "--json"])
        .args(["--timeout-ms", "60000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().flatten() {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut p = Publisher::builder(&b.ingest)
        .producer_id("r2c")
        .batch_events(1)
        .connect()
        .unwrap();
    // The C subscriber is live once it prints a batch: publish a warm-up
    // event until it does (it fills gaps from then on).
    let deadline = Instant::now() + LONG;
    loop {
        p.publish_wait(&Event::new("r2c/warm", "Warm", Vec::new()))
            .unwrap();
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            assert!(l.contains("r2c/warm"), "{}", l);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the C subscriber printed nothing"
        );
    }
    let items: Vec<Event> = (0..50)
        .map(|i| {
            Event::new(
                format!("r2c/agg{}", i % 3),
                format!("Type{}", i % 2),
                format!("payload-{}", i),
            )
            .event_id(format!("id-{}", i))
            .source_pos(i * 10)
        })
        .collect();
    let mut seqs = Vec::new();
    for e in &items {
        seqs.push(p.publish_wait(e).unwrap().seq);
    }
    let mut got = Vec::new();
    while got.len() < items.len() {
        let l = rx
            .recv_timeout(LONG)
            .expect("the C subscriber stopped printing");
        if !l.contains("r2c/warm") {
            got.push(l);
        }
    }
    child.kill().unwrap(); // our own child, by its handle
    child.wait().unwrap();
    for ((e, seq), l) in items.iter().zip(&seqs).zip(&got) {
        // One event per batch; check the fields the CLI prints.
        for want in [
            format!("\"aggregate\":\"{}\"", e.aggregate),
            format!("\"first_seq\":{}", seq),
            format!("\"type\":\"{}\"", e.event_type),
            format!("\"payload\":\"{}\"", String::from_utf8_lossy(&e.payload)),
            format!("\"event_id\":\"{}\"", e.event_id.as_ref().unwrap()),
            format!("\"source_pos\":{}", e.source_pos.unwrap()),
        ] {
            assert!(
                l.replace(": ", ":").contains(&want),
                "{} not in {}",
                want,
                l
            );
        }
    }
    b.stop();
}

#[test]
fn c_publishes_rust_subscribes() {
    let b = Broker::start(&["--default-delay-ms", "0"]);
    let mut sub = Subscriber::builder(&b.pubs, &b.query)
        .exact("c2rs")
        .connect()
        .unwrap();
    sub.start().unwrap();
    let lines: Vec<String> = (0..200)
        .map(|i| format!("line {}", i))
        .chain(["h\u{e9}llo".to_string()])
        .collect();
    let mut child = cli()
        .args([
            "pub",
            "-e",
            &b.ingest,
            "-g",
            "c2rs",
            "-t",
            "FromC",
            "-a",
            "sequenced",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut w = child.stdin.take().unwrap();
        for l in &lines {
            writeln!(w, "{}", l).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let acked: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            l.split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches("seq=")
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(acked.len(), lines.len());
    let batches = collect(&mut sub, lines.len());
    let evs: Vec<_> = batches.iter().flat_map(|b| b.events.iter()).collect();
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), acked);
    assert_eq!(
        evs.iter()
            .map(|e| String::from_utf8(e.payload.clone()).unwrap())
            .collect::<Vec<_>>(),
        lines
    );
    assert!(evs
        .iter()
        .all(|e| e.event_type == "FromC" && e.aggregate == "c2rs"));
    assert_eq!(
        evs.iter().map(|e| e.aggregate_seq).collect::<Vec<_>>(),
        (1..=lines.len() as u64).collect::<Vec<_>>()
    );
    assert!(sub
        .recv(Some(Duration::from_millis(600)))
        .unwrap()
        .is_none());
    b.stop();
}

#[test]
fn hundred_thousand_acked_events_none_lost() {
    const N: u64 = 100_000;
    let b = Broker::start(&["--default-delay-ms", "5"]);
    let mut sub = Subscriber::builder(&b.pubs, &b.query)
        .prefix("many/")
        .connect()
        .unwrap();
    sub.start().unwrap();
    let reader = std::thread::spawn(move || {
        let t = Instant::now();
        let batches = collect(&mut sub, N as usize);
        (batches, t.elapsed(), sub.stats())
    });
    let acks = Arc::new(Mutex::new(Vec::with_capacity(N as usize)));
    let a2 = acks.clone();
    let mut p = Publisher::builder(&b.ingest)
        .ack(AckLevel::Sequenced)
        .window(64)
        .on_result(move |o| a2.lock().unwrap().push((o.ticket.0, o.result.clone())))
        .connect()
        .unwrap();
    let payload = vec![b'x'; 100];
    let t = Instant::now();
    for i in 0..N {
        let e = Event::new(format!("many/{}", i % 16), "E", payload.clone());
        p.publish(&e).unwrap();
    }
    assert!(p.flush(LONG).unwrap());
    let dt = t.elapsed();
    let acks = acks.lock().unwrap();
    assert_eq!(acks.len() as u64, N);
    let mut seqs: Vec<u64> = acks.iter().map(|(_, r)| r.as_ref().unwrap().seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, N);
    let (batches, sdt, st) = reader.join().unwrap();
    let got = check_stream(&batches);
    let mut g = got;
    g.sort_unstable();
    assert_eq!(g, seqs, "the subscriber received exactly the acked events");
    println!(
        "rust publish: {} events acked sequenced (window 64, 100 B) in {:.2} s: {:.0} events/s; \
         subscriber: {:.0} events/s ({} batches, {} filled)",
        N,
        dt.as_secs_f64(),
        N as f64 / dt.as_secs_f64(),
        N as f64 / sdt.as_secs_f64(),
        st.batches,
        st.filled
    );
    b.stop();
}

#[test]
fn stalled_subscriber_gap_is_filled() {
    let b = Broker::start(&["--default-delay-ms", "0", "--hwm", "50"]);
    let mut sub = Subscriber::builder(&b.pubs, &b.query)
        .prefix("stall/")
        .rcvhwm(10)
        .rcvbuf(4096)
        .connect()
        .unwrap();
    sub.start().unwrap();
    let mut p = Publisher::builder(&b.ingest)
        .batch_events(20)
        .connect()
        .unwrap();
    let n = 30_000;
    let payload = vec![b'y'; 500];
    // The subscriber reads nothing meanwhile: the broker's PUB drops.
    for i in 0..n {
        p.publish(&Event::new(
            format!("stall/{}", i % 7),
            "S",
            payload.clone(),
        ))
        .unwrap();
    }
    assert!(p.flush(LONG).unwrap());
    let batches = collect(&mut sub, n);
    assert_eq!(check_stream(&batches).len(), n);
    let st = sub.stats();
    assert!(
        st.filled > 0,
        "nothing was dropped, so nothing tested: {:?}",
        st
    );
    assert_eq!(st.lost, 0);
    println!("stalled subscriber: {:?}", st);
    b.stop();
}

#[test]
fn resend_is_answered_with_the_original_seq() {
    let b = Broker::start(&["--default-delay-ms", "0", "--hold", "ingest->sequencer"]);
    let mut p = Publisher::builder(&b.ingest)
        .producer_id("resender")
        .timeout(Duration::from_millis(300))
        .max_resends(50)
        .connect()
        .unwrap();
    // Held: no reply comes, so the request is sent again (same producer id
    // and seq) until the broker is released.
    p.publish(&Event::new("rs/1", "R", b"once".to_vec()))
        .unwrap();
    let deadline = Instant::now() + LONG;
    while p.stats().resends < 2 {
        p.poll(Duration::from_millis(50)).unwrap();
        assert!(Instant::now() < deadline);
    }
    b.signal("USR1");
    assert!(p.flush(LONG).unwrap());
    assert_eq!(p.stats().acked + p.stats().duplicates, 1);
    // Each copy was answered (the first accepted, the others duplicates of
    // it); the one event exists once: the next event's seq follows it.
    let a2 = p
        .publish_wait(&Event::new("rs/1", "R", b"next".to_vec()))
        .unwrap();
    assert_eq!(a2.aggregate_seq, 2);
    let first = a2.seq - 1;
    // A producer that replays after a restart gets the original seqs back.
    let mut q = Publisher::builder(&b.ingest)
        .producer_id("resender")
        .connect()
        .unwrap();
    let r1 = q
        .publish_wait(&Event::new("rs/1", "R", b"once".to_vec()))
        .unwrap();
    assert_eq!((r1.seq, r1.duplicate), (first, true));
    let r2 = q
        .publish_wait(&Event::new("rs/1", "R", b"next".to_vec()))
        .unwrap();
    assert_eq!((r2.seq, r2.duplicate), (a2.seq, true));
    b.stop();
}

#[test]
fn bad_events_get_typed_errors() {
    let b = Broker::start(&["--default-delay-ms", "0"]);
    let res = Arc::new(Mutex::new(Vec::new()));
    let r2 = res.clone();
    let mut p = Publisher::builder(&b.ingest)
        .on_result(move |o| r2.lock().unwrap().push((o.ticket, o.result.clone())))
        .connect()
        .unwrap();
    let max = p.info().max_name_bytes as usize;
    p.publish(&Event::new("ok/1", "Good", Vec::new())).unwrap();
    p.publish(&Event::new("ok/1", "", Vec::new())).unwrap(); // no type
    p.publish(&Event::new("x".repeat(max + 1), "T", Vec::new()))
        .unwrap();
    p.publish(&Event::new("a\0b", "T", Vec::new())).unwrap();
    p.publish(&Event::new("ok/1", "Good", Vec::new())).unwrap();
    assert!(p.flush(LONG).unwrap());
    let mut res = res.lock().unwrap().clone();
    res.sort_by_key(|r| r.0); // replies may come in another order than requests
    let res: Vec<_> = res.into_iter().map(|r| r.1).collect();
    assert_eq!(res.len(), 5);
    assert!(res[0].is_ok() && res[4].is_ok());
    assert!(matches!(&res[1], Err(Error::Invalid(r)) if r.scope == Scope::Event));
    assert!(matches!(&res[2], Err(Error::TooLarge(r)) if r.scope == Scope::Event));
    assert!(matches!(&res[3], Err(Error::Invalid(r)) if r.scope == Scope::Event));
    // Refused events took no seq.
    assert_eq!(
        res[4].as_ref().unwrap().seq,
        res[0].as_ref().unwrap().seq + 1
    );
    // A whole-request refusal: a level the broker does not know.
    match p.publish_wait_with(&Event::new("ok/1", "G", Vec::new()), AckLevel::Other(99)) {
        Err(Error::Invalid(r)) => assert_eq!(r.scope, Scope::Request),
        r => panic!("{:?}", r),
    }
    // A payload larger than any request is refused before sending.
    let big = vec![0u8; p.info().max_message_bytes as usize + 1];
    assert!(matches!(
        p.publish(&Event::new("ok/1", "G", big)),
        Err(Error::TooLarge(_))
    ));
    b.stop();
}

#[test]
fn resume_from_a_saved_position() {
    let b = Broker::start(&["--default-delay-ms", "20"]);
    let mut p = Publisher::builder(&b.ingest).connect().unwrap();
    let mut sub = Subscriber::builder(&b.pubs, &b.query)
        .prefix("res/")
        .probe_interval(Duration::from_millis(100))
        .connect()
        .unwrap();
    sub.start().unwrap();
    for i in 0..300 {
        p.publish(&Event::new(format!("res/{}", i % 5), "A", Vec::new()))
            .unwrap();
    }
    assert!(p.flush(LONG).unwrap());
    let first = collect(&mut sub, 300);
    // Let the position catch up with what was returned (a probe or two).
    let deadline = Instant::now() + LONG;
    let top = first.iter().map(|b| b.last_seq).max().unwrap();
    while sub.position() <= top {
        assert!(sub
            .recv(Some(Duration::from_millis(100)))
            .unwrap()
            .is_none());
        assert!(
            Instant::now() < deadline,
            "position stuck at {}",
            sub.position()
        );
    }
    let saved = sub.position();
    drop(sub);
    // Published (not only sequenced) before the resume: the catch-up
    // must bring every one of them.
    for i in 0..200 {
        let e = Event::new(format!("res/{}", i % 5), "B", Vec::new());
        p.publish_with(&e, AckLevel::Published).unwrap();
    }
    assert!(p.flush(LONG).unwrap());
    let mut again = Subscriber::builder(&b.pubs, &b.query)
        .prefix("res/")
        .resume_from_seq(saved)
        .connect()
        .unwrap();
    let seen: Vec<u64> = first
        .iter()
        .flat_map(|b| b.events.iter().map(|e| e.seq))
        .collect();
    let mut all: std::collections::BTreeSet<u64> = seen.iter().copied().collect();
    let mut second = Vec::new();
    while all.len() < 500 {
        assert!(
            Instant::now() < deadline,
            "{} of 500 after the resume",
            all.len()
        );
        match again.recv(Some(Duration::from_millis(500))).unwrap() {
            Some(Delivery::Batch(b)) => {
                assert!(b.last_seq >= saved);
                all.extend(b.events.iter().map(|e| e.seq));
                second.push(b);
            }
            Some(d) => panic!("unexpected {:?}", d),
            None => {}
        }
    }
    assert!(
        second.iter().all(|b| b.filled),
        "the resumed part came from the catch-up"
    );
    b.stop();
}

#[test]
fn curve_keys() {
    let dir = std::env::temp_dir().join(format!("sbrs-keys.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["server", "alice"] {
        let st = cli()
            .args(["keygen", name])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let key_of = |file: &str| -> String {
        let s = std::fs::read_to_string(dir.join(file)).unwrap();
        let line = s
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .unwrap();
        line.split_whitespace().next().unwrap().to_string()
    };
    let keys = snapbus::CurveKeys {
        server_public: key_of("server.pub"),
        public: key_of("alice.pub"),
        secret: key_of("alice.key"),
    };
    let allow = dir.join("alice.pub");
    let b = Broker::start(&[
        "--default-delay-ms",
        "0",
        "--secret-key-file",
        dir.join("server.key").to_str().unwrap(),
        "--publisher-keys",
        allow.to_str().unwrap(),
        "--subscriber-keys",
        allow.to_str().unwrap(),
    ]);
    let mut sub = Subscriber::builder(&b.pubs, &b.query)
        .exact("sec/1")
        .curve(keys.clone())
        .connect()
        .unwrap();
    sub.start().unwrap();
    let mut p = Publisher::builder(&b.ingest)
        .curve(keys.clone())
        .connect()
        .unwrap();
    let ack = p
        .publish_wait(&Event::new("sec/1", "S", b"secret".to_vec()))
        .unwrap();
    let got = collect(&mut sub, 1);
    assert_eq!(got[0].events[0].seq, ack.seq);
    // Without an allowed key nothing gets in: no hello reply at all.
    let r = Publisher::builder(&b.ingest)
        .hello_timeout(Duration::from_millis(500))
        .connect();
    assert!(matches!(r, Err(Error::Timeout(_))), "{:?}", r.err());
    // A malformed key is refused before connecting.
    let bad = snapbus::CurveKeys {
        secret: "short".into(),
        ..keys
    };
    assert!(matches!(
        Publisher::builder(&b.ingest).curve(bad).connect(),
        Err(Error::Config(_))
    ));
    b.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
