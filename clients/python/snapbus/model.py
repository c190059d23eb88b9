"""Plain data the client hands to applications."""

import enum
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional


class AckLevel(enum.IntEnum):
    """What a publish waits for (PROTOCOL.md section 6.3)."""
    NONE = 0        # fire-and-forget: a reply comes only for refusals
    SEQUENCED = 1   # every event has its seq
    DURABLE = 2     # in the synced on-disk log (refused ERR_UNSUPPORTED by brokers without one)
    PUBLISHED = 3   # sent in a snapshot batch (also fetchable from then on)


class CloseReason(enum.IntEnum):
    DELAY = 0
    IMMEDIATE = 1
    MAX_EVENTS = 2
    MAX_BYTES = 3
    SHUTDOWN = 4


@dataclass(frozen=True)
class Ack:
    """What the broker assigned to one accepted event. ``seq`` is 0 for an
    ``AckLevel.NONE`` publish (the broker does not report it); ``batch_id``
    is set only with ``AckLevel.PUBLISHED``. ``duplicate``: the broker had
    accepted this event before and these are the original's numbers."""
    seq: int = 0
    aggregate_seq: int = 0
    batch_id: int = 0
    duplicate: bool = False


@dataclass(slots=True)
class Event:
    """An event as subscribers receive it. ``aggregate`` is always the
    event's own aggregate (the batch's unless it joined another aggregate's
    batch through ``caused_by``)."""
    seq: int
    aggregate_seq: int
    aggregate: str
    type: str
    payload: bytes
    event_id: str = ""
    source_pos: Optional[int] = None
    caused_by: int = 0
    producer_id: str = ""
    producer_seq: int = 0
    client_ts_ms: int = 0


@dataclass(slots=True)
class Batch:
    """A snapshot batch. ``recovered`` is True when the subscriber read it
    back from the broker's retained batches (gap fill, catch-up) instead of
    receiving it live."""
    aggregate: str
    batch_id: int
    first_seq: int
    last_seq: int
    aggregate_last_seq: int
    source_pos: Optional[int]
    timestamp_ms: int
    prev_last_seq: int
    close_reason: int
    events: List[Event] = field(default_factory=list)
    recovered: bool = False

    @classmethod
    def from_pb(cls, b, recovered=False):
        agg = b.aggregate
        evs = [Event(e.seq, e.aggregate_seq, e.aggregate or agg, e.type, e.payload, e.event_id,
                     e.source_pos if e.has_source_pos else None, e.caused_by, e.producer_id,
                     e.producer_seq, e.client_ts_ms) for e in b.events]
        return cls(agg, b.batch_id, b.first_seq, b.last_seq, b.aggregate_last_seq,
                   b.source_pos if b.has_source_pos else None, b.timestamp_ms,
                   b.prev_last_seq, b.close_reason, evs, recovered)


@dataclass
class SubscriberState:
    """Where a subscriber is, to save and resume from exactly.

    ``cursor``: every batch of the subscription with ``batch_id <= cursor``
    has been delivered (or was published before the subscriber first
    started). ``last``: per topic (aggregate name), the ``last_seq`` of the
    last batch delivered. ``epoch``: the broker's, when saved."""
    cursor: int = 0
    last: Dict[str, int] = field(default_factory=dict)
    epoch: int = 0

    def to_json(self):
        return json.dumps({"cursor": self.cursor, "last": self.last, "epoch": self.epoch},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        return cls(int(d.get("cursor", 0)), {str(k): int(v) for k, v in d.get("last", {}).items()},
                   int(d.get("epoch", 0)))
