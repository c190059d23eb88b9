//! The one error type of the crate.
//!
//! Every typed refusal of the protocol (PROTOCOL.md section 7) has its own
//! variant, carrying a [`Refusal`] that says whether it refused the whole
//! request or one event, the broker's detail text and the request id.
//! Client-side conditions (backpressure, timeouts, a broker that sent
//! something this client cannot read) have their own variants too.

use crate::pb;
use std::fmt;

/// What a refusal applied to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scope {
    /// `Reply.error`: nothing of the request was done.
    #[default]
    Request,
    /// `EventResult.error`: this event only; the request's other events
    /// were handled on their own.
    Event,
}

/// The details every refusal by the broker carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    /// The broker's words, for people and logs: decide on the variant.
    pub detail: String,
    /// The request's id (0 when the broker could not read it).
    pub request_id: u64,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.scope {
            Scope::Request => "request",
            Scope::Event => "event",
        };
        if self.detail.is_empty() {
            write!(f, "{} refused (request {})", scope, self.request_id)
        } else {
            write!(
                f,
                "{} refused: {} (request {})",
                scope, self.detail, self.request_id
            )
        }
    }
}

/// What a subscriber could not recover: batches the broker no longer
/// retains (PROTOCOL.md 10.6). Ranges are inclusive; 0 means unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loss {
    /// The aggregate whose batches are lost, or "" when several or unknown.
    pub aggregate: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_batch_id: u64,
    pub last_batch_id: u64,
    /// Where the broker's retention starts now.
    pub retained_first_seq: u64,
    pub retained_first_batch_id: u64,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let agg = if self.aggregate.is_empty() {
            "(several)"
        } else {
            &self.aggregate
        };
        write!(
            f,
            "aggregate {} seqs {}..{} batches {}..{} (retention starts at seq {}, batch {})",
            agg,
            self.first_seq,
            self.last_seq,
            self.first_batch_id,
            self.last_batch_id,
            self.retained_first_seq,
            self.retained_first_batch_id
        )
    }
}

/// A broker restart seen by a subscriber (PROTOCOL.md 10.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub old_epoch: u64,
    pub new_epoch: u64,
    /// The broker's seqs went on (it kept its log): the subscriber kept its
    /// state. False: the broker started empty; the subscriber started again
    /// from the new broker's first batch and saved positions are void.
    pub counters_kept: bool,
}

/// Every error of the crate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// `ERR_INVALID`: malformed, or fails validation (empty or bad name).
    #[error("invalid: {0}")]
    Invalid(Refusal),
    /// `ERR_TOO_LARGE`: over a size or count limit of the broker.
    #[error("too large: {0}")]
    TooLarge(Refusal),
    /// `ERR_UNAUTHORIZED` (reserved by this broker version).
    #[error("unauthorized: {0}")]
    Unauthorized(Refusal),
    /// `ERR_DUPLICATE` as an error; a publisher reports it as a successful
    /// [`Ack`](crate::Ack) with `duplicate` set unless told otherwise.
    #[error("duplicate of seq {seq}: {refusal}")]
    Duplicate {
        refusal: Refusal,
        seq: u64,
        aggregate_seq: u64,
    },
    /// `ERR_STORAGE_FULL`: nothing taken; retry later with backoff.
    #[error("storage full: {0}")]
    StorageFull(Refusal),
    /// `ERR_SHUTTING_DOWN`: nothing taken; resend once the broker is back.
    #[error("broker shutting down: {0}")]
    ShuttingDown(Refusal),
    /// `ERR_UNSUPPORTED`: sent to the wrong socket.
    #[error("unsupported: {0}")]
    Unsupported(Refusal),
    /// `ERR_BAD_VERSION`: `broker_version` is the version the broker speaks.
    #[error("bad protocol version (broker speaks {broker_version}): {refusal}")]
    BadVersion {
        refusal: Refusal,
        broker_version: u32,
    },
    /// `ERR_OUT_OF_RETENTION`: a fetch reached before the oldest retained batch.
    #[error("out of retention (retained from seq {retained_first_seq}): {refusal}")]
    OutOfRetention {
        refusal: Refusal,
        retained_first_seq: u64,
        retained_first_batch_id: u64,
    },
    /// `ERR_BEYOND_DEDUP_HORIZON`: a producer seq older than the broker's
    /// de-duplication index remembers; not taken (most likely accepted
    /// long ago).
    #[error("beyond the de-duplication horizon: {0}")]
    BeyondDedupHorizon(Refusal),
    /// `ERR_WRONG_SHARD`: the aggregate belongs to another broker.
    #[error("wrong shard: {0}")]
    WrongShard(Refusal),
    /// An error code this client does not know: a refusal of unknown cause,
    /// not to be retried automatically.
    #[error("refused with unknown error code {code}: {refusal}")]
    Unknown { refusal: Refusal, code: i32 },

    /// The call would have to wait (the in-flight window or the socket's
    /// send queue is full): nothing was taken; try again later.
    #[error("would block: {0}")]
    WouldBlock(&'static str),
    /// No answer in time. For a publish the outcome is unknown: resend
    /// with the same producer id and seq (or event id).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The broker sent something this client cannot read (bad frames, a
    /// message that does not decode, an unknown version, a wrong count).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A bad argument or option, refused before anything was sent.
    #[error("bad argument: {0}")]
    Config(String),
    /// The publisher or subscriber was closed.
    #[error("closed: {0}")]
    Closed(&'static str),
    /// A ZeroMQ call failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds the typed error for a protocol error code (`code` != 0).
    pub fn from_code(code: i32, refusal: Refusal) -> Error {
        use pb::ErrorCode as C;
        match C::from_i32(code) {
            Some(C::ErrInvalid) => Error::Invalid(refusal),
            Some(C::ErrTooLarge) => Error::TooLarge(refusal),
            Some(C::ErrUnauthorized) => Error::Unauthorized(refusal),
            Some(C::ErrDuplicate) => Error::Duplicate {
                refusal,
                seq: 0,
                aggregate_seq: 0,
            },
            Some(C::ErrStorageFull) => Error::StorageFull(refusal),
            Some(C::ErrShuttingDown) => Error::ShuttingDown(refusal),
            Some(C::ErrUnsupported) => Error::Unsupported(refusal),
            Some(C::ErrBadVersion) => Error::BadVersion {
                refusal,
                broker_version: 0,
            },
            Some(C::ErrOutOfRetention) => Error::OutOfRetention {
                refusal,
                retained_first_seq: 0,
                retained_first_batch_id: 0,
            },
            Some(C::ErrBeyondDedupHorizon) => Error::BeyondDedupHorizon(refusal),
            Some(C::ErrWrongShard) => Error::WrongShard(refusal),
            _ => Error::Unknown { refusal, code },
        }
    }

    /// The protocol's error code for a refusal by the broker, else None.
    pub fn code(&self) -> Option<i32> {
        use pb::ErrorCode as C;
        let c = match self {
            Error::Invalid(_) => C::ErrInvalid,
            Error::TooLarge(_) => C::ErrTooLarge,
            Error::Unauthorized(_) => C::ErrUnauthorized,
            Error::Duplicate { .. } => C::ErrDuplicate,
            Error::StorageFull(_) => C::ErrStorageFull,
            Error::ShuttingDown(_) => C::ErrShuttingDown,
            Error::Unsupported(_) => C::ErrUnsupported,
            Error::BadVersion { .. } => C::ErrBadVersion,
            Error::OutOfRetention { .. } => C::ErrOutOfRetention,
            Error::BeyondDedupHorizon(_) => C::ErrBeyondDedupHorizon,
            Error::WrongShard(_) => C::ErrWrongShard,
            Error::Unknown { code, .. } => return Some(*code),
            _ => return None,
        };
        Some(c as i32)
    }

    /// The refusal's details, for an error sent by the broker.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Invalid(r)
            | Error::TooLarge(r)
            | Error::Unauthorized(r)
            | Error::StorageFull(r)
            | Error::ShuttingDown(r)
            | Error::Unsupported(r)
            | Error::BeyondDedupHorizon(r)
            | Error::WrongShard(r) => Some(r),
            Error::Duplicate { refusal, .. }
            | Error::BadVersion { refusal, .. }
            | Error::OutOfRetention { refusal, .. }
            | Error::Unknown { refusal, .. } => Some(refusal),
            _ => None,
        }
    }

    /// True when sending the same thing again later may succeed without a
    /// change: backpressure, timeouts, a full log, a broker shutting down.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::WouldBlock(_)
                | Error::Timeout(_)
                | Error::StorageFull(_)
                | Error::ShuttingDown(_)
        )
    }
}
