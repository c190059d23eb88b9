//! What applications send and receive.

use crate::pb;

/// Which reply a publish asks for (PROTOCOL.md 6.3).
///
/// Marked `non_exhaustive`: the protocol adds levels (the broker's
/// `replicated`, with replication) without breaking code that matches on
/// this enum. [`AckLevel::Other`] sends a level this client version has no
/// name for.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckLevel {
    /// Fire-and-forget: a reply comes only when an event is refused.
    None,
    /// Reply once every event has its seq.
    Sequenced,
    /// Reply once the events are in the broker's synced on-disk log.
    Durable,
    /// Reply once every event was sent in a snapshot batch.
    Published,
    /// A level by its wire number (`AckLevel` in proto/snapbus.proto).
    Other(i32),
}

impl AckLevel {
    /// The wire value (`Publish.ack`).
    pub fn wire(self) -> i32 {
        match self {
            AckLevel::None => pb::AckLevel::AckNone as i32,
            AckLevel::Sequenced => pb::AckLevel::AckSequenced as i32,
            AckLevel::Durable => pb::AckLevel::AckDurable as i32,
            AckLevel::Published => pb::AckLevel::AckPublished as i32,
            AckLevel::Other(v) => v,
        }
    }

    /// The level of a wire value.
    pub fn from_wire(v: i32) -> AckLevel {
        match v {
            0 => AckLevel::None,
            1 => AckLevel::Sequenced,
            2 => AckLevel::Durable,
            3 => AckLevel::Published,
            v => AckLevel::Other(v),
        }
    }
}

impl std::str::FromStr for AckLevel {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<AckLevel> {
        Ok(match s {
            "none" => AckLevel::None,
            "sequenced" => AckLevel::Sequenced,
            "durable" => AckLevel::Durable,
            "published" => AckLevel::Published,
            _ => match s.parse::<i32>() {
                Ok(v) if v >= 0 => AckLevel::from_wire(v),
                _ => {
                    return Err(crate::Error::Config(format!(
                        "ack level {:?}: use none, sequenced, durable, published or a number",
                        s
                    )))
                }
            },
        })
    }
}

/// One event to publish. Build it with [`Event::new`] and the setters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// Ordering domain and topic, e.g. `e3/42` (1 to `max_name_bytes` bytes).
    pub aggregate: String,
    /// Event type, required (1 to `max_name_bytes` bytes).
    pub event_type: String,
    pub payload: Vec<u8>,
    /// For de-duplication by the broker; carried to subscribers.
    pub event_id: Option<String>,
    /// A position in the publisher's source, e.g. a block height.
    pub source_pos: Option<u64>,
    /// Seq of the causing event (0: none), PROTOCOL.md 6.5.
    pub caused_by: u64,
    /// The producer seq; None: the publisher's next one (with a producer id).
    pub producer_seq: Option<u64>,
    /// The publisher's clock, ms; None: stamped if the publisher is told to.
    pub client_ts_ms: Option<u64>,
}

impl Event {
    pub fn new(
        aggregate: impl Into<String>,
        event_type: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Event {
        Event {
            aggregate: aggregate.into(),
            event_type: event_type.into(),
            payload: payload.into(),
            ..Event::default()
        }
    }
    pub fn event_id(mut self, id: impl Into<String>) -> Event {
        self.event_id = Some(id.into());
        self
    }
    pub fn source_pos(mut self, pos: u64) -> Event {
        self.source_pos = Some(pos);
        self
    }
    pub fn caused_by(mut self, seq: u64) -> Event {
        self.caused_by = seq;
        self
    }
    pub fn producer_seq(mut self, seq: u64) -> Event {
        self.producer_seq = Some(seq);
        self
    }
    pub fn client_ts_ms(mut self, ms: u64) -> Event {
        self.client_ts_ms = Some(ms);
        self
    }
}

/// An accepted event's acknowledgement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ack {
    /// Its seq (0 with [`AckLevel::None`]).
    pub seq: u64,
    pub aggregate_seq: u64,
    /// The batch it was published in ([`AckLevel::Published`] only).
    pub batch_id: u64,
    /// The broker had accepted it before (a resend or a replay): `seq` is
    /// the original event's.
    pub duplicate: bool,
}

/// An event as subscribers receive it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequencedEvent {
    pub seq: u64,
    pub aggregate_seq: u64,
    /// The event's own aggregate (the batch's unless it joined another
    /// aggregate's batch through `caused_by`).
    pub aggregate: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub event_id: String,
    pub source_pos: Option<u64>,
    pub caused_by: u64,
    pub producer_id: String,
    pub producer_seq: u64,
    pub client_ts_ms: u64,
}

/// A snapshot batch: what subscribers receive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub aggregate: String,
    pub batch_id: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub aggregate_last_seq: u64,
    pub source_pos: Option<u64>,
    pub timestamp_ms: u64,
    pub prev_last_seq: u64,
    /// `CloseReason` wire value.
    pub close_reason: i32,
    pub events: Vec<SequencedEvent>,
    /// It came from a fetch (gap fill, catch-up) rather than live.
    pub filled: bool,
}

impl From<pb::SnapshotBatch> for Batch {
    fn from(b: pb::SnapshotBatch) -> Batch {
        Batch::from_pb(b, false)
    }
}

impl Batch {
    pub(crate) fn from_pb(b: pb::SnapshotBatch, filled: bool) -> Batch {
        let agg = b.aggregate;
        let events = b
            .events
            .into_iter()
            .map(|e| SequencedEvent {
                seq: e.seq,
                aggregate_seq: e.aggregate_seq,
                aggregate: if e.aggregate.is_empty() {
                    agg.clone()
                } else {
                    e.aggregate
                },
                event_type: e.r#type,
                payload: e.payload,
                event_id: e.event_id,
                source_pos: if e.has_source_pos {
                    Some(e.source_pos)
                } else {
                    None
                },
                caused_by: e.caused_by,
                producer_id: e.producer_id,
                producer_seq: e.producer_seq,
                client_ts_ms: e.client_ts_ms,
            })
            .collect();
        Batch {
            aggregate: agg,
            batch_id: b.batch_id,
            first_seq: b.first_seq,
            last_seq: b.last_seq,
            aggregate_last_seq: b.aggregate_last_seq,
            source_pos: if b.has_source_pos {
                Some(b.source_pos)
            } else {
                None
            },
            timestamp_ms: b.timestamp_ms,
            prev_last_seq: b.prev_last_seq,
            close_reason: b.close_reason,
            events,
            filled,
        }
    }
}

/// CURVE keys (docs/SECURITY.md), as Z85 text (40 characters) as printed by
/// `snapbus keygen`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CurveKeys {
    /// The broker's public key.
    pub server_public: String,
    /// This client's key pair.
    pub public: String,
    pub secret: String,
}

impl std::fmt::Debug for CurveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveKeys")
            .field("server_public", &self.server_public)
            .field("public", &self.public)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// The broker's limits and counters from its hello reply (PROTOCOL.md 5.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerInfo {
    pub broker: String,
    pub max_message_bytes: u32,
    pub max_events_per_request: u32,
    pub max_payload_bytes: u32,
    pub max_name_bytes: u32,
    pub last_seq: u64,
    pub last_batch_id: u64,
    pub epoch: u64,
    pub low_seq: u64,
    pub shard_index: u32,
    pub shard_count: u32,
}

impl From<pb::HelloReply> for BrokerInfo {
    fn from(h: pb::HelloReply) -> BrokerInfo {
        BrokerInfo {
            broker: h.broker,
            max_message_bytes: h.max_message_bytes,
            max_events_per_request: h.max_events_per_request,
            max_payload_bytes: h.max_payload_bytes,
            max_name_bytes: h.max_name_bytes,
            last_seq: h.last_seq,
            last_batch_id: h.last_batch_id,
            epoch: h.epoch,
            low_seq: h.low_seq,
            shard_index: h.shard_index,
            shard_count: h.shard_count,
        }
    }
}
