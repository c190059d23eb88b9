"""Typed exceptions: one class per ErrorCode of the protocol, plus the
client-side conditions (try again, timeout, protocol violation, data lost).

    SnapbusError
    ├── BrokerError                 a refusal carrying an ErrorCode
    │   ├── InvalidError            ERR_INVALID          (1)
    │   ├── TooLargeError           ERR_TOO_LARGE        (2)
    │   ├── UnauthorizedError       ERR_UNAUTHORIZED     (3)
    │   ├── DuplicateError          ERR_DUPLICATE        (4)  .seq = the original seq
    │   ├── StorageFullError        ERR_STORAGE_FULL     (5)
    │   ├── ShuttingDownError       ERR_SHUTTING_DOWN    (6)
    │   ├── UnsupportedError        ERR_UNSUPPORTED      (7)
    │   ├── BadVersionError         ERR_BAD_VERSION      (8)
    │   ├── OutOfRetentionError     ERR_OUT_OF_RETENTION (9)
    │   │   └── DataLostError       a subscriber could not fill a gap
    │   ├── BeyondDedupHorizonError ERR_BEYOND_DEDUP_HORIZON (10) see docs/PUBLISHING.md
    │   ├── WrongShardError         ERR_WRONG_SHARD      (11) see snapbus.shard_of
    │   ├── BusyError               ERR_BUSY             (12) out of file descriptors; retry
    │   └── UnknownBrokerError      a code this client does not know
    ├── TryAgain                    a non-blocking call would have to wait
    ├── AckTimeout                  no reply in time: the outcome is unknown
    ├── ProtocolError               the broker sent something off-protocol
    └── BrokerRestarted             the broker's epoch changed

``BrokerError.scope`` is ``"request"`` when the whole request was refused
(``Reply.error``; nothing of it was done) and ``"event"`` when one event of
an otherwise accepted publish was (``EventResult.error``).
"""

__all__ = [
    "SnapbusError", "BrokerError", "InvalidError", "TooLargeError", "UnauthorizedError",
    "DuplicateError", "StorageFullError", "ShuttingDownError", "UnsupportedError",
    "BadVersionError", "OutOfRetentionError", "DataLostError",
    "BeyondDedupHorizonError", "WrongShardError", "BusyError",
    "UnknownBrokerError",
    "TryAgain", "AckTimeout", "ProtocolError", "BrokerRestarted", "error_for",
]


class SnapbusError(Exception):
    """Base of every exception this package raises."""


class BrokerError(SnapbusError):
    code = None          # the ErrorCode number
    name = None          # the ErrorCode name
    retriable = False    # whether resending the same thing later can succeed

    def __init__(self, detail="", scope="request", request_id=0, code=None):
        if code is not None:
            self.code = code
        self.detail = detail
        self.scope = scope
        self.request_id = request_id
        super().__init__("%s: %s" % (self.name or "error %s" % self.code, detail or "(no detail)"))


class InvalidError(BrokerError):
    code, name = 1, "ERR_INVALID"


class TooLargeError(BrokerError):
    code, name = 2, "ERR_TOO_LARGE"


class UnauthorizedError(BrokerError):
    code, name = 3, "ERR_UNAUTHORIZED"


class DuplicateError(BrokerError):
    """Already accepted. ``seq``/``aggregate_seq`` are the original event's.
    The publisher reports a duplicate as success (``Ack.duplicate``) unless
    it was created with ``duplicate_is_error=True``."""
    code, name = 4, "ERR_DUPLICATE"

    def __init__(self, detail="", scope="event", request_id=0, seq=0, aggregate_seq=0, code=None):
        super().__init__(detail, scope, request_id, code)
        self.seq = seq
        self.aggregate_seq = aggregate_seq


class StorageFullError(BrokerError):
    code, name, retriable = 5, "ERR_STORAGE_FULL", True


class ShuttingDownError(BrokerError):
    code, name, retriable = 6, "ERR_SHUTTING_DOWN", True


class UnsupportedError(BrokerError):
    code, name = 7, "ERR_UNSUPPORTED"


class BadVersionError(BrokerError):
    code, name = 8, "ERR_BAD_VERSION"


class OutOfRetentionError(BrokerError):
    """A fetch reached before the oldest retained batch. The broker's
    retention horizon comes with it."""
    code, name = 9, "ERR_OUT_OF_RETENTION"

    def __init__(self, detail="", scope="request", request_id=0, retained_first_seq=0,
                 retained_first_batch_id=0, code=None):
        super().__init__(detail, scope, request_id, code)
        self.retained_first_seq = retained_first_seq
        self.retained_first_batch_id = retained_first_batch_id


class DataLostError(OutOfRetentionError):
    """A subscriber missed batches that the broker no longer retains.
    ``losses`` lists ``(topic, from_seq, to_seq)`` ranges (topic ``None``:
    every topic of the subscription; ``to_seq`` 0: unknown end). The
    subscriber has already moved on to what is retained: keep reading."""

    def __init__(self, losses, retained_first_seq=0, retained_first_batch_id=0):
        super().__init__("batches lost: %r" % (losses,), "request", 0,
                         retained_first_seq, retained_first_batch_id)
        self.losses = list(losses)


class BeyondDedupHorizonError(BrokerError):
    """The event's producer seq is older than what the broker's
    de-duplication index remembers of its producer: the broker cannot tell
    whether it was accepted before, so it took nothing (per event). Do not
    resend it as it is: it was most likely accepted long ago
    (docs/PUBLISHING.md, sizing the horizon)."""
    code, name = 10, "ERR_BEYOND_DEDUP_HORIZON"


class WrongShardError(BrokerError):
    """The event's aggregate belongs to another broker: aggregates are
    spread over several (docs/SCALING.md); pick it with ``shard_of``."""
    code, name = 11, "ERR_WRONG_SHARD"


class BusyError(BrokerError):
    """The broker is out of a process resource (file descriptors) right
    now and took nothing; not a full disk. Retry after a moment."""
    code, name, retriable = 12, "ERR_BUSY", True


class UnknownBrokerError(BrokerError):
    name = "ERR_UNKNOWN"


_BY_CODE = {c.code: c for c in (InvalidError, TooLargeError, UnauthorizedError, DuplicateError,
                                 StorageFullError, ShuttingDownError, UnsupportedError,
                                 BadVersionError, OutOfRetentionError,
                                 BeyondDedupHorizonError, WrongShardError, BusyError)}


def error_for(code, detail="", scope="request", request_id=0, **extra):
    """The exception for an ErrorCode number (UnknownBrokerError for a code
    this client does not know: treat as a refusal, do not retry)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return UnknownBrokerError(detail, scope, request_id, code=code)
    return cls(detail, scope, request_id, **extra)


class TryAgain(SnapbusError):
    """A non-blocking call could not proceed without waiting (the window is
    full or the socket's send queue is: backpressure). Nothing was sent."""


class AckTimeout(SnapbusError):
    """No reply within the timeout. The request may or may not have been
    accepted (PROTOCOL.md section 6.4)."""

    def __init__(self, msg="no reply within the timeout", request_id=0):
        super().__init__(msg)
        self.request_id = request_id


class ProtocolError(SnapbusError):
    """The broker's reply or batch does not follow the protocol."""


class BrokerRestarted(SnapbusError):
    """The broker's epoch changed: it restarted."""

    def __init__(self, old_epoch, new_epoch):
        super().__init__("broker restarted (epoch %d -> %d)" % (old_epoch, new_epoch))
        self.old_epoch = old_epoch
        self.new_epoch = new_epoch
