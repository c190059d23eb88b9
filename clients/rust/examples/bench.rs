//! Publish and subscribe rates of the Rust client against a running broker:
//! N events of SIZE bytes over 16 aggregates, acked at LEVEL with a window
//! of 64 requests, while a lossless subscriber to everything counts them.
//!
//! ```sh
//! cargo run --release --example bench -- tcp://127.0.0.1:7701 tcp://127.0.0.1:7702 \
//!     tcp://127.0.0.1:7703 [N=1000000] [SIZE=100] [LEVEL=sequenced]
//! ```
//! Start the broker with `--default-delay-ms 0` or its default delay; a
//! fresh broker (or data directory) gives comparable runs.

use snapbus::{AckLevel, Delivery, Event, Publisher, Subscriber};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn main() -> snapbus::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        eprintln!(
            "usage: bench INGEST PUB QUERY [EVENTS] [SIZE] [none|sequenced|durable|published]"
        );
        std::process::exit(2);
    }
    let n: u64 = a
        .get(4)
        .map_or(1_000_000, |s| s.parse().expect("EVENTS: a number"));
    let size: usize = a.get(5).map_or(100, |s| s.parse().expect("SIZE: a number"));
    let level: AckLevel = a.get(6).map_or(Ok(AckLevel::Sequenced), |s| s.parse())?;
    let tag = format!("bench{}/", std::process::id());

    let mut sub = Subscriber::builder(&a[2], &a[3])
        .prefix(tag.clone())
        .connect()?;
    sub.start()?;
    let reader = std::thread::spawn(move || -> snapbus::Result<(f64, u64, u64)> {
        let mut got = 0u64;
        let mut seqs = HashSet::new();
        let mut t0 = None;
        while got < n {
            match sub.recv(Some(Duration::from_secs(30)))? {
                Some(Delivery::Batch(b)) => {
                    t0.get_or_insert_with(Instant::now);
                    for e in &b.events {
                        seqs.insert(e.seq);
                    }
                    got += b.events.len() as u64;
                }
                Some(other) => eprintln!("subscriber: {:?}", other),
                None => {
                    return Err(snapbus::Error::Timeout(format!(
                        "subscriber: {} of {} events",
                        got, n
                    )))
                }
            }
        }
        let dt = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
        Ok((dt, seqs.len() as u64, sub.stats().filled))
    });

    let mut p = Publisher::builder(&a[1]).ack(level).window(64).connect()?;
    let payload = vec![b'x'; size];
    let aggs: Vec<String> = (0..16).map(|i| format!("{}{}", tag, i)).collect();
    let t = Instant::now();
    for i in 0..n {
        p.publish(&Event::new(
            aggs[(i % 16) as usize].clone(),
            "Bench",
            payload.clone(),
        ))?;
    }
    if !p.flush(Duration::from_secs(120))? {
        eprintln!("not every ack came in 120 s");
    }
    let dt = t.elapsed().as_secs_f64();
    let st = p.stats();
    println!(
        "rust publish  {:>9} events {:>5} B ack {:?}: {:>10.0} events/s  ({} requests, {} acked, {} refused, {} timeouts)",
        n, size, level, n as f64 / dt, st.requests, st.acked, st.refused, st.timeouts
    );
    let (sdt, distinct, filled) = reader.join().expect("subscriber thread")?;
    println!(
        "rust subscribe {:>8} events: {:>10.0} events/s from the first batch  ({} distinct seqs, {} batches filled)",
        n,
        n as f64 / sdt.max(1e-9),
        distinct,
        filled
    );
    Ok(())
}
