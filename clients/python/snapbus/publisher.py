"""Publisher: sends events to the broker's ingest socket.

One DEALER socket, a bounded window of acked requests in flight, and wire
batching: events sent one by one are packed into ``Publish`` requests of up
to ``batch_events`` events / ``batch_bytes`` bytes. There is no background
thread: the socket is driven by the calls the application makes
(``send``, ``poll``, ``flush``, ``Receipt.result``, ``close``).

When does a batch of events go on the wire?

* with ``linger_ms=0`` (the default), at once while fewer than ``eager``
  (2) acked requests are in flight; otherwise as soon as a reply brings
  the number below that (noticed on the next call), so that events sent
  in a loop collect in the open batch and batches grow with the load;
  fire-and-forget events go at once;
* with ``linger_ms > 0``, once the open batch is that old (checked at the
  next call) or full, so that events travel together even at low rates;
* always when it is full, on ``flush()``, ``close()`` and when a receipt
  of one of its events is waited for.

Backpressure (PROTOCOL.md section 11): when the window is full and the
open batch is full too, or the socket's send queue is full because the
broker stopped reading, a blocking ``send`` waits (reading replies
meanwhile) and a non-blocking one (``block=False``) raises ``TryAgain``
without taking the event.
"""

import time
from collections import OrderedDict

import zmq

from ._conn import decode_reply, encode, make_socket, reply_error
from ._pb import pb
from .errors import (AckTimeout, DuplicateError, ProtocolError, SnapbusError, TooLargeError,
                     UnauthorizedError,
                     TryAgain, error_for)
from .model import Ack, AckLevel

_OPEN, _SENT, _DONE = 0, 1, 2
_NONE_ACK = Ack()


class Receipt:
    """The outcome of one event, like a future.

    ``result()`` returns an ``Ack`` or raises the event's typed error
    (``InvalidError``, ``TooLargeError``, ... with ``scope`` "event" or
    "request"), ``AckTimeout`` when no reply came in time (outcome
    unknown). For ``AckLevel.NONE`` the receipt is done once the event is on
    the wire (``Ack`` with seq 0); a refusal that arrives later (while the
    publisher reads its socket) still sets its error."""

    __slots__ = ("_pub", "_state", "_res", "_error", "request_id")

    def __init__(self, pub):
        self._pub = pub
        self._state = _OPEN
        self._res = None
        self._error = None
        self.request_id = 0

    def done(self):
        return self._state == _DONE

    def result(self, timeout=None):
        """Waits (driving the publisher) up to ``timeout`` seconds (None:
        until settled) and returns the ``Ack``; raises the event's error.
        Raises the builtin ``TimeoutError`` if it is not settled in time."""
        if self._state != _DONE:
            self._pub._wait_for(self, timeout)
        if self._error is not None:
            raise self._error
        r = self._res
        if r is None:
            return _NONE_ACK
        return Ack(r.seq, r.aggregate_seq, r.batch_id, r.error == pb.ERR_DUPLICATE)

    def exception(self, timeout=None):
        if self._state != _DONE:
            self._pub._wait_for(self, timeout)
        return self._error

    @property
    def seq(self):
        """The assigned seq once acked (0 before, on error, and with NONE)."""
        return self._res.seq if self._res is not None and self._error is None else 0

    def __repr__(self):
        st = {_OPEN: "open", _SENT: "sent", _DONE: "done"}[self._state]
        return "<Receipt %s seq=%d error=%r>" % (st, self.seq, self._error)


def _blen(s):
    return len(s) if s.isascii() else len(s.encode("utf-8"))


class Publisher:
    """Publishes events to a snapbus broker.

    Parameters (all keyword-only after ``endpoint``):

    ``ack``            default ``AckLevel`` for ``send`` (SEQUENCED)
    ``window``         most acked requests without a reply (64)
    ``batch_events``   most events per request (1000; capped by the broker's
                       ``max_events_per_request``)
    ``batch_bytes``    about this many bytes per request (256 KiB; capped
                       below the broker's ``max_message_bytes``)
    ``linger_ms``      how long an open batch may wait for more events (0:
                       see ``eager``)
    ``eager``          with ``linger_ms=0``: an acked request goes out at once
                       while fewer than this many are in flight (2); beyond
                       that, events collect until a reply arrives or the
                       batch is full, so batches grow with the load
    ``timeout``        seconds to wait for each acked request's reply (10;
                       add the longest batching delay for PUBLISHED); also
                       the longest a blocking ``send`` waits for the broker
                       to take a request (then ``TimeoutError``, the event
                       not taken): no call waits forever
    ``producer_id``    stamped on every event; each event then also gets the
                       next ``producer_seq`` (from ``producer_seq_start``)
                       unless ``send`` is given one
    ``stamp_time``     set ``client_ts_ms`` to the local clock when not given
    ``duplicate_is_error``  raise ``DuplicateError`` instead of returning
                       ``Ack(duplicate=True)`` for an ERR_DUPLICATE event
    ``server_public_key``, ``public_key``, ``secret_key``  CURVE (Z85 text
                       or 32 bytes); see the README: brokers without CURVE
                       refuse the handshake
    ``sndhwm``, ``rcvhwm``  ZeroMQ high-water marks (1000, 100000)
    ``hello_timeout``  seconds to wait for the broker at start (5)
    ``on_result``      optional ``callable(receipt)``, called as each
                       receipt settles
    ``context``        a ``zmq.Context`` (default: the shared instance)

    A Publisher is not thread-safe: use it from one thread (ZeroMQ sockets
    are not thread-safe either); make one per thread if needed.
    """

    def __init__(self, endpoint, *, ack=AckLevel.SEQUENCED, window=64, batch_events=1000,
                 batch_bytes=256 * 1024, linger_ms=0, timeout=10.0, producer_id=None,
                 producer_seq_start=1, stamp_time=False, duplicate_is_error=False,
                 server_public_key=None, public_key=None, secret_key=None, sndhwm=1000,
                 rcvhwm=100000, hello_timeout=5.0, client="snapbus-python", on_result=None,
                 context=None, eager=2):
        if window < 1:
            raise ValueError("window must be at least 1")
        self._ack = int(AckLevel(ack))
        self._window = window
        self._linger = linger_ms / 1000.0
        self._eager = max(1, min(eager, window))
        self._timeout = timeout
        self._producer_id = producer_id or ""
        self.next_producer_seq = producer_seq_start
        self._stamp = stamp_time
        self._dup_error = duplicate_is_error
        self._on_result = on_result
        w = []
        self._sock = make_socket(context or zmq.Context.instance(), zmq.DEALER, endpoint,
                                 sndhwm=sndhwm, rcvhwm=max(rcvhwm, 2 * window + 16),
                                 linger=1000,
                                 curve=dict(server_public_key=server_public_key,
                                            public_key=public_key, secret_key=secret_key),
                                 watch=w)
        self._watch = w[0]
        self._poller = zmq.Poller()
        self._rid = 0
        self._inflight = {}            # request_id -> (receipts, deadline)
        self._none_recent = OrderedDict()  # ACK_NONE requests whose refusal may still come
        self._req = pb.Request(version=1)
        self._open = self._req.publish
        self._open_rc = []
        self._open_bytes = 0
        self._open_ack = self._ack
        self._open_since = 0.0
        self._next_check = 0.0
        self.stats = dict(requests=0, events=0, acked=0, refused=0, timeouts=0,
                          unmatched_replies=0, bad_replies=0)
        self.last_unmatched_error = None
        self.closed = False
        try:
            self.hello = self._hello(client, hello_timeout)
        except BaseException:
            self._watch.close()
            self._sock.close(0)
            raise
        h = self.hello
        self.epoch = h.epoch
        self._batch_events = max(1, min(batch_events, h.max_events_per_request or batch_events))
        # Room for the request's own fields and the varint lengths.
        self._max_req = (h.max_message_bytes or 4 << 20) - 64
        self._batch_bytes = max(1, min(batch_bytes, self._max_req))

    # ------------------------------------------------------------ public API

    def send(self, aggregate, type, payload=b"", *, event_id=None, source_pos=None,
             caused_by=0, producer_seq=None, client_ts_ms=None, ack=None, block=True):
        """Queues one event; returns its ``Receipt``.

        ``block=False``: raises ``TryAgain`` (the event was not taken) where
        a blocking call would wait for the broker. ``source_pos`` None means
        "not set" (0 is a valid position). Names are checked by the broker
        (typed per-event errors); only an event too large for any request
        is refused here, with ``TooLargeError`` (scope "event")."""
        if self.closed:
            raise SnapbusError("publisher is closed")
        ack = self._ack if ack is None else int(ack)
        size = len(payload) + _blen(aggregate) + _blen(type) + 24
        if event_id:
            size += _blen(event_id) + 4
        if self._producer_id:
            size += _blen(self._producer_id) + 16
        if size > self._max_req:
            raise TooLargeError("event %d B > limit %d (the broker's max_message_bytes, less the "
                                "request's own fields)" % (size, self._max_req), "event")
        n = len(self._open_rc)
        if n and (ack != self._open_ack or n >= self._batch_events
                  or self._open_bytes + size > self._batch_bytes):
            self._ship(block)
            n = 0
        e = self._open.events.add()
        try:
            e.aggregate = aggregate
            e.type = type
            if payload:
                e.payload = payload
            if event_id:
                e.event_id = event_id
            if source_pos is not None:
                e.source_pos = source_pos
                e.has_source_pos = True
            if caused_by:
                e.caused_by = caused_by
            if self._producer_id:
                e.producer_id = self._producer_id
                if producer_seq is None:
                    producer_seq = self.next_producer_seq
                    self.next_producer_seq += 1
            if producer_seq:
                e.producer_seq = producer_seq
            if client_ts_ms is None and self._stamp:
                client_ts_ms = int(time.time() * 1000)
            if client_ts_ms:
                e.client_ts_ms = client_ts_ms
        except BaseException:
            del self._open.events[-1]        # e.g. a str payload, a lone surrogate
            raise
        r = Receipt(self)
        self._open_rc.append(r)
        self._open_bytes += size
        if n == 0:
            self._open_ack = ack
            if self._linger:
                self._open_since = time.monotonic()
        if n + 1 >= self._batch_events or self._open_bytes >= self._batch_bytes:
            self._try_ship()
        elif self._linger:
            if time.monotonic() - self._open_since >= self._linger:
                self._try_ship()
        elif ack == pb.ACK_NONE or len(self._inflight) < self._eager:
            self._try_ship()
        elif n & 7 == 7 and self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            # A reply came (checked every 8 events: the check costs a few
            # microseconds): if it frees the pipeline, the batch goes now.
            self._pump(0)
            if len(self._inflight) < self._eager:
                self._try_ship()
        return r

    def publish(self, aggregate, type, payload=b"", *, ack=None, timeout=None, **kw):
        """Sends one event and waits for its ack: ``send(...).result()``."""
        return self.send(aggregate, type, payload, ack=ack, **kw).result(timeout)

    def poll(self, timeout=0):
        """Reads the replies that have arrived (waiting up to ``timeout``
        seconds for the first), ships a lingering batch that is due, and
        expires timed-out requests. Returns the number of replies read."""
        if self._open_rc and time.monotonic() - self._open_since >= self._linger:
            self._try_ship()
        return self._pump(timeout)

    def flush(self, timeout=None):
        """Sends the open batch and waits until every acked request has its
        reply (or timed out). Returns True when nothing is left in flight,
        False if ``timeout`` seconds passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        if self._open_rc:
            try:
                self._ship(True, end)
            except TimeoutError:
                return False
        while self._inflight:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._pump(0.1 if left is None else min(left, 0.1))
        return True

    @property
    def in_flight(self):
        """Acked requests sent and not answered yet."""
        return len(self._inflight)

    def close(self, timeout=None):
        """Flushes (waiting up to ``timeout``, default the ack timeout), then
        closes the socket. Receipts still open are failed with AckTimeout."""
        if self.closed:
            return
        try:
            self.flush(self._timeout if timeout is None else timeout)
        finally:
            for rid, (rcs, _) in list(self._inflight.items()):
                self._settle_error(rcs, AckTimeout("publisher closed before the reply", rid),
                                   refused=False)
            self._inflight.clear()
            for r in self._open_rc:
                self._settle_error([r], SnapbusError("publisher closed before the event was sent"),
                                   refused=False)
            self._open_rc = []
            self.closed = True
            self._watch.close()
            self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------- internals

    def _hello(self, client, timeout):
        self._rid += 1
        rid = self._rid
        self._sock.send(encode(rid, hello=pb.Hello(client=client)))
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            # Woken every 50 ms to look for a refusal: it comes on the
            # monitor, not on this socket.
            if left <= 0 or not self._sock.poll(int(min(left, 0.05) * 1000) + 1):
                self._watch.check("hello")
                if left <= 0:
                    raise AckTimeout("no hello reply from the broker", rid)
                continue
            rep, _ = decode_reply(self._sock.recv_multipart())
            if rep.request_id != rid:
                continue
            err = reply_error(rep)
            if err:
                raise err
            if not rep.HasField("hello"):
                raise ProtocolError("hello reply without a HelloReply")
            return rep.hello

    def _encode_open(self, rid):
        self._req.request_id = rid
        self._open.ack = self._open_ack
        return self._req.SerializeToString()

    def _sent(self, rid):
        rcs = self._open_rc
        for r in rcs:
            r._state = _SENT
            r.request_id = rid
        self.stats["requests"] += 1
        self.stats["events"] += len(rcs)
        if self._open_ack == pb.ACK_NONE:
            for r in rcs:
                r._state = _DONE
            self._none_recent[rid] = rcs
            if len(self._none_recent) > 4096:
                self._none_recent.popitem(last=False)
            if self._on_result:
                for r in rcs:
                    self._on_result(r)
        else:
            self._inflight[rid] = (rcs, time.monotonic() + self._timeout)
        self._req.Clear()
        self._req.version = 1
        self._open = self._req.publish
        self._open_rc = []
        self._open_bytes = 0

    def _try_ship(self):
        """Ships the open batch if that needs no waiting. Returns True if shipped."""
        if self._open_ack != pb.ACK_NONE and len(self._inflight) >= self._window:
            self._pump(0)
            if len(self._inflight) >= self._window:
                return False
        rid = self._rid + 1
        try:
            self._sock.send(self._encode_open(rid), zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._rid = rid
        self._sent(rid)
        return True

    def _ship(self, block, end=None):
        """Ships the open batch, waiting if ``block`` (until ``end``, a
        monotonic time; by default ``timeout`` from now), else raising
        TryAgain."""
        if block and end is None:
            end = time.monotonic() + self._timeout
        while self._open_ack != pb.ACK_NONE and len(self._inflight) >= self._window:
            if not block:
                self._pump(0)
                if len(self._inflight) >= self._window:
                    raise TryAgain("the in-flight window is full")
                break
            if end is not None and time.monotonic() >= end:
                raise TimeoutError("the in-flight window stayed full")
            self._pump(0.1)
        rid = self._rid + 1
        data = self._encode_open(rid)
        while True:
            try:
                self._sock.send(data, zmq.NOBLOCK)
                break
            except zmq.Again:
                if not block:
                    raise TryAgain("the broker is applying backpressure") from None
                if end is not None and time.monotonic() >= end:
                    raise TimeoutError("the broker did not take the request in time") from None
            # Wait until the socket can send, reading replies meanwhile.
            self._poller.register(self._sock, zmq.POLLIN | zmq.POLLOUT)
            ev = dict(self._poller.poll(100)).get(self._sock, 0)
            if ev & zmq.POLLIN:
                self._pump(0)
        self._rid = rid
        self._sent(rid)

    def _wait_for(self, receipt, timeout):
        end = None if timeout is None else time.monotonic() + timeout
        if receipt._state == _OPEN:
            self._ship(True, end)
        while receipt._state != _DONE:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("the event's outcome is not known yet")
            self._pump(0.1 if left is None else min(left, 0.1))

    def _pump(self, timeout):
        """Handles every reply available, waiting up to timeout s for one."""
        got = 0
        sock = self._sock
        if timeout and not (self._inflight or self._none_recent) and not self._open_rc:
            return 0
        if timeout:
            if sock.poll(int(timeout * 1000)):
                self._on_reply(sock.recv_multipart(zmq.NOBLOCK))
                got = 1
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_reply(frames)
            got += 1
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + 0.05
            self._expire(now)
        return got

    def _expire(self, now):
        expired = [rid for rid, (_, dl) in self._inflight.items() if dl <= now]
        for rid in expired:
            rcs, _ = self._inflight.pop(rid)
            self.stats["timeouts"] += 1
            err = AckTimeout("no reply within %.1f s" % self._timeout, rid)
            if self._watch.refused():
                err = UnauthorizedError("the broker refused this client's key in the "
                                        "CURVE handshake", "request", rid)
            self._settle_error(rcs, err, refused=False)

    def _settle_error(self, rcs, err, refused=True):
        if refused:
            self.stats["refused"] += len(rcs)
        for r in rcs:
            r._error = err
            r._state = _DONE
        if self._on_result:
            for r in rcs:
                self._on_result(r)

    def _on_reply(self, frames):
        try:
            rep, _ = decode_reply(frames)
        except ProtocolError:
            self.stats["bad_replies"] += 1
            return
        rid = rep.request_id
        ent = self._inflight.pop(rid, None)
        if ent is not None:
            rcs = ent[0]
        else:
            rcs = self._none_recent.pop(rid, None)
            if rcs is None:
                # request_id 0: a refusal of a request whose id the broker
                # could not read; that request will time out.
                self.stats["unmatched_replies"] += 1
                self.last_unmatched_error = reply_error(rep)
                return
        err = reply_error(rep)
        if err is not None:
            self._settle_error(rcs, err)
            return
        results = rep.publish.results
        if len(results) != len(rcs):
            self._settle_error(rcs, ProtocolError("%d results for %d events"
                                                  % (len(results), len(rcs))))
            return
        acked = refused = 0
        for r, res in zip(rcs, results):
            code = res.error
            if code == pb.ERR_NONE or (code == pb.ERR_DUPLICATE and not self._dup_error):
                r._res = res
                acked += 1
            else:
                extra = {}
                if code == pb.ERR_DUPLICATE:
                    extra = dict(seq=res.seq, aggregate_seq=res.aggregate_seq)
                r._error = error_for(code, res.detail, "event", rid, **extra)
                refused += 1
            r._state = _DONE
        st = self.stats
        st["acked"] += acked
        st["refused"] += refused
        if self._on_result:
            for r in rcs:
                self._on_result(r)
