//! Encoding requests and reading replies and batches (PROTOCOL.md sections
//! 2 to 5). Nothing here trusts the network: every decoding failure is an
//! [`Error::Protocol`], never a panic.

use crate::error::{Error, Refusal, Result, Scope};
use crate::model::{Batch, Event};
use crate::pb;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

/// The protocol version this client speaks.
pub const VERSION: u32 = 1;

/// Encodes `Request{version 1, request_id, hello{client}}`.
pub fn encode_hello(request_id: u64, client: &str) -> Vec<u8> {
    pb::Request {
        version: VERSION,
        request_id,
        body: Some(pb::request::Body::Hello(pb::Hello {
            client: client.to_string(),
        })),
    }
    .encode_to_vec()
}

/// Encodes `Request{version 1, request_id, fetch}`.
pub fn encode_fetch(request_id: u64, fetch: &pb::Fetch) -> Vec<u8> {
    pb::Request {
        version: VERSION,
        request_id,
        body: Some(pb::request::Body::Fetch(fetch.clone())),
    }
    .encode_to_vec()
}

/// Appends one event as `Publish.events` (field 2) to `out`, encoding it
/// from the caller's borrowed fields (no copy of the Event itself).
/// Returns the number of bytes appended.
pub fn append_event(
    out: &mut Vec<u8>,
    ev: &Event,
    producer_id: &str,
    producer_seq: u64,
    client_ts_ms: u64,
) -> usize {
    use prost::encoding::{bool as pbool, bytes, string, uint64};
    let start = out.len();
    let s = |tag: u32, v: &String| {
        if v.is_empty() {
            0
        } else {
            string::encoded_len(tag, v)
        }
    };
    let u = |tag: u32, v: u64| {
        if v == 0 {
            0
        } else {
            uint64::encoded_len(tag, &v)
        }
    };
    let len = s(1, &ev.aggregate)
        + s(2, &ev.event_type)
        + if ev.payload.is_empty() {
            0
        } else {
            bytes::encoded_len(3, &ev.payload)
        }
        + ev.event_id.as_ref().map_or(0, |x| s(4, x))
        + ev.source_pos.map_or(0, |p| u(5, p) + 2)
        + u(6, ev.caused_by)
        + if producer_id.is_empty() {
            0
        } else {
            1 + encoded_len_varint(producer_id.len() as u64) + producer_id.len()
        }
        + u(8, producer_seq)
        + u(9, client_ts_ms);
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
    if !ev.aggregate.is_empty() {
        string::encode(1, &ev.aggregate, out);
    }
    if !ev.event_type.is_empty() {
        string::encode(2, &ev.event_type, out);
    }
    if !ev.payload.is_empty() {
        bytes::encode(3, &ev.payload, out);
    }
    if let Some(id) = ev.event_id.as_ref().filter(|x| !x.is_empty()) {
        string::encode(4, id, out);
    }
    if let Some(p) = ev.source_pos {
        if p != 0 {
            uint64::encode(5, &p, out);
        }
    }
    if ev.caused_by != 0 {
        uint64::encode(6, &ev.caused_by, out);
    }
    if !producer_id.is_empty() {
        encode_key(7, WireType::LengthDelimited, out);
        encode_varint(producer_id.len() as u64, out);
        out.extend_from_slice(producer_id.as_bytes());
    }
    if producer_seq != 0 {
        uint64::encode(8, &producer_seq, out);
    }
    if client_ts_ms != 0 {
        uint64::encode(9, &client_ts_ms, out);
    }
    if ev.source_pos.is_some() {
        pbool::encode(10, &true, out);
    }
    out.len() - start
}

/// Wraps encoded events (from [`append_event`]) into a whole Request frame.
pub fn encode_publish(request_id: u64, ack: i32, events: &[u8]) -> Vec<u8> {
    let ack_len = if ack == 0 {
        0
    } else {
        1 + encoded_len_varint(ack as u64)
    };
    let publish_len = ack_len + events.len();
    let mut out = Vec::with_capacity(publish_len + 24);
    out.extend_from_slice(&[0x08, VERSION as u8]);
    if request_id != 0 {
        out.push(0x10);
        encode_varint(request_id, &mut out);
    }
    encode_key(4, WireType::LengthDelimited, &mut out);
    encode_varint(publish_len as u64, &mut out);
    if ack != 0 {
        out.push(0x08);
        encode_varint(ack as u64, &mut out);
    }
    out.extend_from_slice(events);
    out
}

/// Reads a reply message (frames of one ZeroMQ message, from a DEALER that
/// sends no delimiter). Returns the reply and the frames after it.
pub fn decode_reply(frames: &[Vec<u8>]) -> Result<(pb::Reply, &[Vec<u8>])> {
    let mut i = 0;
    // A delimiter comes back only if we sent one; tolerate it anyway.
    if frames.len() > 1 && frames[0].is_empty() {
        i = 1;
    }
    let first = frames
        .get(i)
        .ok_or_else(|| Error::Protocol("empty reply message".into()))?;
    let rep = pb::Reply::decode(&first[..])
        .map_err(|e| Error::Protocol(format!("reply does not decode: {}", e)))?;
    if rep.version != VERSION {
        return Err(Error::Protocol(format!(
            "reply version {} (this client speaks {}); detail: {}",
            rep.version, VERSION, rep.detail
        )));
    }
    Ok((rep, &frames[i + 1..]))
}

/// The typed error of a whole-request refusal, or None when `error` is 0.
pub fn reply_error(rep: &pb::Reply) -> Option<Error> {
    if rep.error == 0 {
        return None;
    }
    let refusal = Refusal {
        scope: Scope::Request,
        detail: rep.detail.clone(),
        request_id: rep.request_id,
    };
    Some(match Error::from_code(rep.error, refusal) {
        Error::BadVersion { refusal, .. } => Error::BadVersion {
            refusal,
            broker_version: rep.version,
        },
        Error::OutOfRetention { refusal, .. } => {
            let (s, b) = match &rep.body {
                Some(pb::reply::Body::Fetch(f)) => {
                    (f.retained_first_seq, f.retained_first_batch_id)
                }
                _ => (0, 0),
            };
            Error::OutOfRetention {
                refusal,
                retained_first_seq: s,
                retained_first_batch_id: b,
            }
        }
        e => e,
    })
}

/// The typed error of a per-event refusal (`code` != 0).
pub fn event_error(code: i32, res: &pb::EventResult, request_id: u64) -> Error {
    let refusal = Refusal {
        scope: Scope::Event,
        detail: res.detail.clone(),
        request_id,
    };
    match Error::from_code(code, refusal) {
        Error::Duplicate { refusal, .. } => Error::Duplicate {
            refusal,
            seq: res.seq,
            aggregate_seq: res.aggregate_seq,
        },
        e => e,
    }
}

/// Decodes one encoded SnapshotBatch (a pub frame or a fetch frame) and
/// checks what the rest of the client relies on.
pub fn decode_batch(data: &[u8], headers_only: bool) -> Result<pb::SnapshotBatch> {
    let b = pb::SnapshotBatch::decode(data)
        .map_err(|e| Error::Protocol(format!("batch does not decode: {}", e)))?;
    if b.version != VERSION {
        return Err(Error::Protocol(format!("batch version {}", b.version)));
    }
    if b.batch_id == 0 || b.aggregate.is_empty() || b.last_seq < b.first_seq {
        return Err(Error::Protocol(format!(
            "batch {} of {:?}: bad ids (seqs {}..{})",
            b.batch_id, b.aggregate, b.first_seq, b.last_seq
        )));
    }
    if !headers_only && b.events.is_empty() {
        return Err(Error::Protocol(format!(
            "batch {} has no events",
            b.batch_id
        )));
    }
    if b.prev_last_seq != 0 && b.prev_last_seq >= b.first_seq {
        return Err(Error::Protocol(format!(
            "batch {}: prev_last_seq {} not below first_seq {}",
            b.batch_id, b.prev_last_seq, b.first_seq
        )));
    }
    Ok(b)
}

/// Reads a message of the pub socket: `[topic][SnapshotBatch]`, the topic
/// being the aggregate name and one 0x00 byte.
pub fn decode_live(frames: &[Vec<u8>]) -> Result<pb::SnapshotBatch> {
    if frames.len() != 2 {
        return Err(Error::Protocol(format!(
            "pub message with {} frames (expected 2)",
            frames.len()
        )));
    }
    let b = decode_batch(&frames[1], false)?;
    let t = &frames[0];
    if t.len() != b.aggregate.len() + 1
        || t[t.len() - 1] != 0
        || &t[..t.len() - 1] != b.aggregate.as_bytes()
    {
        return Err(Error::Protocol(format!(
            "topic frame does not match aggregate {:?}",
            b.aggregate
        )));
    }
    Ok(b)
}

/// Converts a decoded batch into the public model.
pub fn to_batch(b: pb::SnapshotBatch, filled: bool) -> Batch {
    Batch::from_pb(b, filled)
}
