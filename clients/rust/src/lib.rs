//! A client for the snapbus event-bus broker.
//!
//! * [`Publisher`]: sends [`Event`]s to the broker's ingest socket at any
//!   [`AckLevel`], with a bounded in-flight window, batching on the wire,
//!   blocking [`publish`](Publisher::publish) and non-blocking
//!   [`try_publish`](Publisher::try_publish) (backpressure as
//!   [`Error::WouldBlock`], never a drop), producer ids and seqs, and
//!   resending of unanswered requests (answered with the original seqs).
//! * [`Subscriber`]: receives snapshot [`Batch`]es of prefix or exact
//!   subscriptions without loss: gaps are detected from the batches'
//!   `prev_last_seq` chains and a periodic header probe, and filled from
//!   the broker's retention; it resumes from a saved
//!   [`position`](Subscriber::position), and reports losses and broker
//!   restarts as typed [`Delivery`] items. It is an [`Iterator`].
//! * [`shard_of`]: which broker of several owns an aggregate.
//!
//! The wire protocol is docs/PROTOCOL.md of the snapbus repository; this
//! crate is written from it and from proto/snapbus.proto.
//!
//! ```no_run
//! use snapbus::{AckLevel, Delivery, Event, Publisher, Subscriber};
//! use std::time::Duration;
//!
//! let mut sub = Subscriber::builder("tcp://127.0.0.1:7702", "tcp://127.0.0.1:7703")
//!     .prefix("e3/")
//!     .connect()?;
//! sub.start()?; // fixes the start point: everything published from now on
//!
//! let mut publ = Publisher::builder("tcp://127.0.0.1:7701")
//!     .ack(AckLevel::Sequenced)
//!     .producer_id("example")
//!     .connect()?;
//! let ack = publ.publish_wait(&Event::new("e3/42", "Started", b"hello".to_vec()))?;
//!
//! while let Some(d) = sub.recv(Some(Duration::from_secs(5)))? {
//!     if let Delivery::Batch(b) = d {
//!         assert!(b.events.iter().any(|e| e.seq == ack.seq));
//!         break;
//!     }
//! }
//! # Ok::<(), snapbus::Error>(())
//! ```
//!
//! Routing among several brokers (this example runs as a test):
//!
//! ```
//! assert_eq!(snapbus::shard_of("order/1", 4), 2);
//! assert_eq!(snapbus::shard_of("order/1", 1), 0);
//! ```

/// The protobuf messages of proto/snapbus.proto, generated at build time.
#[allow(clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/snapbus.rs"));
}

pub mod codec;
mod conn;
pub mod engine;
mod error;
mod model;
mod publisher;
mod shard;
mod subscriber;

pub use engine::SubscriberStats;
pub use error::{Error, Loss, Refusal, Restart, Result, Scope};
pub use model::{Ack, AckLevel, Batch, BrokerInfo, CurveKeys, Event, SequencedEvent};
pub use publisher::{Outcome, Publisher, PublisherBuilder, PublisherStats, Ticket};
pub use shard::shard_of;
pub use subscriber::{Delivery, Subscriber, SubscriberBuilder};
