"""Subscriber: live snapshot batches, with gap detection, gap fill from the
broker's retained batches, catch-up and resume.

The rules are those of PROTOCOL.md section 10, with one cursor:

* ``cursor`` C: every batch of the subscription with ``batch_id <= C`` has
  been delivered, or was published before the subscriber first started.
  It starts at ``HelloReply.last_batch_id`` read on the query socket
  *before* subscribing (or at a saved state's cursor).
* Subscribed to everything (prefix ``""``): C is also the last batch id
  delivered; a live batch whose id is not C + 1 reveals missed batches,
  fetched with ``after_batch_id = C`` (section 10.2).
* Otherwise, per topic T, ``last[T]``: the last_seq of T's last delivered
  batch. A live batch whose ``prev_last_seq`` is not ``last[T]`` reveals
  missed batches of T, fetched with ``exact`` T, ``after_batch_id = C``,
  ``from_seq = last[T] + 1``, ``to_seq = prev_last_seq`` (section 10.3).
  A topic new to the subscriber starts at its first batch after C.
* A batch that was missed with nothing after it on its topic shows no gap.
  So, when no batch has arrived for ``idle_check`` seconds, the subscriber
  asks the broker (hello on the query socket) for the newest batch id, and
  if it is past C, sweeps: fetches the subscription's batches after C
  (only their headers, where the broker supports ``Fetch.headers_only``),
  fills what is missing, and moves C to where the sweep ended. With prefix
  subscriptions it also sweeps every ``sync_interval`` seconds while busy,
  which keeps C recent.

Every batch is delivered once, in order per topic. Batches the broker no
longer retains are reported with ``DataLostError`` (or ``on_data_lost``),
in stream order, after which the subscriber carries on from what is
retained. A stopping broker publishes an EpochEnd marker naming its last
batch and keeps its query socket open for a while: the subscriber sweeps
through that batch at once, and reports what it could not fetch before the
socket closed as lost (``DataLostError`` with ``batch_ids``);
``unchecked()`` tells an application that stops meanwhile what it would
miss. A broker restart is noticed from the ``epoch`` in hello and fetch
replies; when the broker's counters went back (a broker that keeps no log),
the state restarts from the new broker's first batch and
``BrokerRestarted`` is raised once (or ``on_restart`` is called).
"""

import time
from collections import deque

import zmq

from ._conn import decode_reply, encode, make_socket, reply_error
from ._pb import FETCH_HAS_EXACT, FETCH_HAS_HEADERS_ONLY, pb
from .errors import AckTimeout, BrokerRestarted, DataLostError, ProtocolError
from .model import Batch, SubscriberState

__all__ = ["Subscriber", "AsyncSubscriber"]


class _Loss:
    __slots__ = ("losses", "first_seq", "first_batch_id", "batch_ids")

    def __init__(self, losses, first_seq, first_batch_id, batch_ids=None):
        self.losses, self.first_seq, self.first_batch_id = losses, first_seq, first_batch_id
        self.batch_ids = batch_ids


class _Cursor:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Skip:
    """A batch handled without delivery: only the saved state moves."""
    __slots__ = ("aggregate", "last_seq", "batch_id")

    def __init__(self, aggregate, last_seq, batch_id):
        self.aggregate, self.last_seq, self.batch_id = aggregate, last_seq, batch_id


class _Note:
    """A restart, queued in stream order."""
    __slots__ = ("exc", "epoch")

    def __init__(self, exc, epoch):
        self.exc, self.epoch = exc, epoch


class _FetchResult:
    __slots__ = ("reply", "error", "batches")

    def __init__(self, reply, error, batches):
        self.reply, self.error, self.batches = reply, error, batches


class _Restart(Exception):
    pass


class _Tracker:
    """The gap-detection state machine, without I/O. Its algorithms are
    generators that yield Fetch field dicts and receive _FetchResult."""

    def __init__(self, subs, state, headers_only):
        self.subs = subs                      # [(name, exact)]
        self.all = any(n == "" and not x for n, x in subs)
        self.cursor = state.cursor
        self.last = dict(state.last)
        self.epoch = state.epoch
        self.max_seq = max(self.last.values(), default=0)
        self.headers_only = headers_only
        self.floor = 0                        # from_seq resume: batches up to this are not wanted
        self.out = deque()
        self.stats = dict(batches=0, events=0, recovered=0, gaps=0, fetches=0, sweeps=0,
                          lost=0, skipped=0, bad=0)

    def matches(self, agg):
        for n, x in self.subs:
            if (agg == n) if x else agg.startswith(n):
                return True
        return False

    def reset(self, exc):
        self.cursor = 0
        self.last.clear()
        self.max_seq = 0
        self.floor = 0
        self.out.append(_Note(exc, self.epoch))

    def _set_cursor(self, v):
        self.cursor = v
        self.out.append(_Cursor(v))

    def _deliver(self, m, recovered):
        self.last[m.aggregate] = m.last_seq
        if self.all:
            self.cursor = m.batch_id
        if m.last_seq > self.max_seq:
            self.max_seq = m.last_seq
        st = self.stats
        if m.last_seq <= self.floor:
            # Holds no seq above a from_seq resume point (it was still on
            # its way when the catch-up fetch ran): handled, not wanted.
            st["skipped"] += 1
            self.out.append(_Skip(m.aggregate, m.last_seq, m.batch_id))
            return
        st["batches"] += 1
        st["events"] += len(m.events)
        if recovered:
            st["recovered"] += 1
        self.out.append(Batch.from_pb(m, recovered))

    def _loss(self, losses, rep):
        self.stats["lost"] += 1
        f = rep.reply
        self.out.append(_Loss(losses, f.retained_first_seq if f else 0,
                              f.retained_first_batch_id if f else 0))

    def _fetch(self, **f):
        self.stats["fetches"] += 1
        rep = yield f
        if rep.error is not None and rep.error.code != pb.ERR_OUT_OF_RETENTION:
            raise rep.error
        return rep

    # ----------------------------------------------------------- live batches

    def on_live(self, b):
        if b.batch_id <= self.cursor:
            self.stats["skipped"] += 1
            return
        if self.all:
            if b.batch_id != self.cursor + 1:
                self.stats["gaps"] += 1
                yield from self._fill_all(b.batch_id - 1)
                if b.batch_id <= self.cursor:
                    return
                if self.cursor < b.batch_id - 1:      # not served, and no error said why
                    self._loss([(None, 0, 0)], _FetchResult(None, None, ()))
            self._deliver(b, False)
            return
        t = b.aggregate
        lt = self.last.get(t)
        if lt is not None and b.last_seq <= lt:
            self.stats["skipped"] += 1
            return
        if b.prev_last_seq != (0 if lt is None else lt):
            self.stats["gaps"] += 1
            yield from self._fill_topic(t, b.prev_last_seq, self.cursor)
            lt2 = self.last.get(t)
            if lt2 is not None and b.last_seq <= lt2:
                return
            if lt is not None and (lt2 or 0) < b.prev_last_seq and not self._lost_reported:
                self._loss([(t, (lt2 or 0) + 1, b.prev_last_seq)], _FetchResult(None, None, ()))
        self._deliver(b, False)

    def _fill_all(self, upto, from_seq=0):
        """Fetches every batch after the cursor, up to batch ``upto``
        (None: to the newest), delivering them in order."""
        found = lost = False
        after, fs = self.cursor, from_seq
        while upto is None or self.cursor < upto:
            f = dict(prefix="", after_batch_id=after, from_seq=fs)
            if upto is not None and after == self.cursor:
                f["max_batches"] = min(upto - self.cursor, 1 << 31)
            rep = yield from self._fetch(**f)
            fr = rep.reply
            if rep.error is not None:
                # Carry on from the retention horizon: from its seq, which
                # is what the broker checks when after_batch_id is 0.
                h = fr.retained_first_seq if fr else 0
                if not h or (after == 0 and fs >= h):
                    return
                self._loss([(None, 0, h - 1)], rep)
                lost = True
                after, fs = 0, max(fs, h)
                continue
            for m in rep.batches:
                if m.batch_id <= self.cursor:
                    continue
                if m.batch_id != self.cursor + 1 and from_seq == 0 and not lost:
                    self._loss([(None, 0, 0)], rep)
                if upto is None and from_seq == 0 and not found:
                    found = True
                    self.stats["gaps"] += 1       # found by a sweep
                self._deliver(m, True)
            after = max(after, fr.last_batch_id)
            if after > self.cursor:
                self._set_cursor(after if upto is None else min(upto, after))
            if not fr.more:
                return

    def _fill_topic(self, t, to_seq, after, from_seq=None):
        """Fetches the batches of topic t after batch ``after`` that hold
        seqs up to ``to_seq`` (0: no bound) and were not delivered yet."""
        self._lost_reported = False
        lt = self.last.get(t, 0)
        if from_seq is None:
            from_seq = lt + 1 if lt else 0
        if to_seq and to_seq < from_seq:
            return
        while True:
            f = dict(prefix=t, from_seq=from_seq, to_seq=to_seq, after_batch_id=after)
            if FETCH_HAS_EXACT:
                f["exact"] = True
            rep = yield from self._fetch(**f)
            fr = rep.reply
            if rep.error is not None:
                h = fr.retained_first_seq if fr else 0
                if not h or (after == 0 and from_seq >= h):
                    return
                self._loss([(t, from_seq, min(h - 1, to_seq) if to_seq else h - 1)], rep)
                self._lost_reported = True
                after, from_seq = 0, max(from_seq, h)   # from the horizon on
                if to_seq and to_seq < from_seq:
                    return
                continue
            for m in rep.batches:
                if m.aggregate == t and m.last_seq > self.last.get(t, 0):
                    self._deliver(m, True)
            if (to_seq and self.last.get(t, 0) >= to_seq) or not fr.more:
                return
            after = fr.last_batch_id

    _lost_reported = False

    # ------------------------------------------------------ sweep / catch-up

    def sweep(self, from_seq=0):
        """Reads the subscription's batches after the cursor; delivers those
        not delivered yet; moves the cursor to where the reading ended."""
        self.stats["sweeps"] += 1
        if self.all:
            yield from self._fill_all(None, from_seq)
            return
        ends = []
        headers = self.headers_only and from_seq == 0
        for name, exact in self.subs:
            after = self.cursor
            fs = from_seq
            while True:
                f = dict(prefix=name, after_batch_id=after, from_seq=fs)
                if exact and FETCH_HAS_EXACT:
                    f["exact"] = True
                if headers:
                    f["headers_only"] = True
                rep = yield from self._fetch(**f)
                fr = rep.reply
                if rep.error is not None:
                    h = fr.retained_first_seq if fr else 0
                    if not h or (after == 0 and fs >= h):
                        break
                    self._loss([(name or None, fs, h - 1)], rep)
                    after, fs = 0, max(fs, h)       # from the horizon on
                    continue
                for m in rep.batches:
                    t = m.aggregate
                    if (exact and t != name) or not self.matches(t):
                        continue
                    lt = self.last.get(t)
                    if lt is not None and m.last_seq <= lt:
                        continue
                    if headers:
                        # Missing: read topic t in full from this batch on.
                        self.stats["gaps"] += 1
                        yield from self._fill_topic(t, 0, m.batch_id - 1,
                                                    from_seq=(lt + 1) if lt else 0)
                    else:
                        if lt is not None and m.prev_last_seq != lt:
                            self._loss([(t, lt + 1, m.prev_last_seq)], rep)
                        self._deliver(m, True)
                after = max(after, fr.last_batch_id)
                if not fr.more:
                    break
            ends.append(after)
        if ends and min(ends) > self.cursor:
            self._set_cursor(min(ends))


def _parse_live(frames, stats):
    if len(frames) != 2:
        stats["bad"] += 1
        return None
    try:
        b = pb.SnapshotBatch.FromString(frames[1])
    except Exception:
        stats["bad"] += 1
        return None
    if b.version != 1 or frames[0] != b.aggregate.encode("utf-8") + b"\x00" or not b.events:
        stats["bad"] += 1
        return None
    return b


class _Base:
    """What the blocking and the asyncio subscriber share."""

    def _setup(self, prefixes, exact, resume, from_seq, idle_check, sync_interval,
               fetch_timeout, fetch_retries, headers_only, on_data_lost, on_restart):
        if isinstance(prefixes, str):
            prefixes = [prefixes]
        if isinstance(exact, str):
            exact = [exact]
        subs = [(p, False) for p in prefixes] + [(x, True) for x in exact]
        if not subs:
            subs = [("", False)]
        for name, x in subs:
            if "\x00" in name or (x and not name):
                raise ValueError("bad subscription %r" % name)
        if resume is not None and from_seq is not None:
            raise ValueError("give resume or from_seq, not both")
        if headers_only is None:
            headers_only = FETCH_HAS_HEADERS_ONLY
        resume_state = resume or SubscriberState()
        self._tr = _Tracker(subs, resume_state, headers_only)
        self._saved = SubscriberState(resume_state.cursor, dict(resume_state.last),
                                      resume_state.epoch)
        self._resume = resume
        self._from_seq = from_seq
        self._idle = idle_check
        self._sync = sync_interval
        self._ftimeout = fetch_timeout
        self._fretries = fetch_retries
        self._on_lost = on_data_lost
        self._on_restart = on_restart
        self._rid = 0
        self._last_live_id = 0
        self._need_sweep = False
        self._catchup = None
        # The broker's end of epoch (EpochEnd on the live socket): (epoch,
        # last_batch_id, last_seq, monotonic time its query socket closes).
        self._end = None
        self.closed = False

    def _on_marker(self, frames):
        """True if frames are the broker's EpochEnd marker (handled here):
        batches up to its last_batch_id exist; sweep through them while the
        stopping broker still answers fetches (PROTOCOL.md section 10.8)."""
        if len(frames) != 2 or frames[0] != b"\x00":
            return False
        try:
            m = pb.EpochEnd.FromString(frames[1])
        except Exception:
            self._tr.stats["bad"] += 1
            return True
        tr = self._tr
        if m.version != 1 or m.epoch != tr.epoch or (self._end and self._end[0] == m.epoch):
            return True
        if m.last_batch_id > tr.cursor:
            self._end = (m.epoch, m.last_batch_id, m.last_seq,
                         time.monotonic() + m.linger_ms / 1000.0)
            self._need_sweep = True
        return True

    def _note_end(self, epoch, end_batch_id, last_seq):
        """A query reply from a stopping broker names its last batch too
        (for a subscriber too far behind for every marker); while it still
        answers, it gets 5 s more before the unchecked tail counts as lost."""
        if not end_batch_id or epoch != self._tr.epoch:
            return
        until = time.monotonic() + 5.0
        e = self._end
        if e is None or e[0] != epoch:
            if end_batch_id > self._tr.cursor:
                self._end = (epoch, end_batch_id, last_seq, until)
                self._need_sweep = True
        elif until > e[3]:
            self._end = (e[0], e[1], e[2], until)

    def _end_pending(self):
        e = self._end
        if e is not None and self._tr.cursor >= e[1]:
            self._end = e = None                   # checked through the end
        return e

    def _request_budget(self):
        """With a stopping broker's tail to fetch: how long a request may
        still wait (its query socket closes then); else None."""
        e = self._end_pending()
        return None if e is None else max(e[3] - time.monotonic(), 0.2)

    def _end_failed(self):
        """A fetch failed with a stopping broker's tail unchecked: once its
        query socket has closed, report batch ids cursor+1 .. end as lost
        (they are in its log: a restarted broker serves them). True if
        reported, so the caller carries on instead of raising."""
        e = self._end_pending()
        if e is None or time.monotonic() < e[3]:
            return False
        tr = self._tr
        tr.stats["lost"] += 1
        tr.out.append(_Loss([(None, 0, e[2])], 0, 0, (tr.cursor + 1, e[1])))
        self._end = None
        return True

    def unchecked(self):
        """Batches a stopping broker said it published that have been
        neither returned nor reported lost: ``(first_batch_id,
        last_batch_id, last_seq)``, or None. An application stopping now
        would miss them."""
        e = self._end_pending()
        return None if e is None else (self._tr.cursor + 1, e[1], e[2])

    def _topics(self):
        for name, x in self._tr.subs:
            yield name.encode("utf-8") + (b"\x00" if x else b"")

    def _start_state(self, hello):
        """Initial cursor from the hello read before subscribing."""
        tr = self._tr
        old = tr.epoch
        tr.epoch = hello.epoch
        if self._resume is not None:
            if old and old != hello.epoch and (hello.last_batch_id < tr.cursor
                                               or hello.last_seq < tr.max_seq):
                tr.reset(BrokerRestarted(old, hello.epoch))   # the state is of another run
            self._need_sweep = True
        elif self._from_seq is not None:
            self._catchup = self._from_seq + 1
            tr.floor = self._from_seq
        else:
            tr.cursor = self._saved.cursor = hello.last_batch_id
        if not self._saved.epoch or self._resume is None:
            self._saved.epoch = hello.epoch

    def _check_epoch(self, epoch, last_batch_id, last_seq):
        tr = self._tr
        if not epoch or epoch == tr.epoch:
            return
        old = tr.epoch
        tr.epoch = epoch
        if old and (last_batch_id < tr.cursor or last_seq < tr.max_seq):
            tr.reset(BrokerRestarted(old, epoch))
            self._need_sweep = True
            raise _Restart()

    def _fetch_request(self, f):
        self._rid += 1
        return self._rid, encode(self._rid, fetch=pb.Fetch(**f))

    def _fetch_result(self, rid, frames):
        """None if the reply is not for rid (a late reply to an earlier try)."""
        rep, rest = decode_reply(frames)
        if rep.request_id != rid:
            return None
        err = reply_error(rep)
        fr = rep.fetch if rep.HasField("fetch") else None
        if fr is not None:
            self._check_epoch(fr.epoch, fr.last_batch_id_published, fr.last_seq)
            self._note_end(fr.epoch, fr.end_batch_id, fr.last_seq)
        if err is not None:
            return _FetchResult(fr, err, ())
        if fr is None:
            raise ProtocolError("fetch reply without a FetchReply")
        if len(rest) != fr.count:
            raise ProtocolError("fetch reply: count %d, %d frames" % (fr.count, len(rest)))
        return _FetchResult(fr, None, [pb.SnapshotBatch.FromString(x) for x in rest])

    def _hello_result(self, rid, frames):
        rep, _ = decode_reply(frames)
        if rep.request_id != rid:
            return None
        err = reply_error(rep)
        if err is not None:
            raise err
        if not rep.HasField("hello"):
            raise ProtocolError("hello reply without a HelloReply")
        if self._tr.epoch:
            self._note_end(rep.hello.epoch, rep.hello.end_batch_id, rep.hello.last_seq)
        return rep.hello

    def _pop(self):
        """The next delivered batch; None if nothing is ready. Raises (or
        reports) losses and restarts in stream order, and keeps the state
        that ``state()`` returns in step with what was returned."""
        out = self._tr.out
        st = self._saved
        while out:
            item = out.popleft()
            if isinstance(item, Batch):
                st.last[item.aggregate] = item.last_seq
                if self._tr.all:
                    st.cursor = item.batch_id
                return item
            if isinstance(item, _Cursor):
                st.cursor = item.value
            elif isinstance(item, _Skip):
                st.last[item.aggregate] = item.last_seq
                if self._tr.all:
                    st.cursor = item.batch_id
            elif isinstance(item, _Loss):
                err = DataLostError(item.losses, item.first_seq, item.first_batch_id)
                # Batch ids that may hold lost batches, when known (the
                # tail a stopping broker named); else None.
                err.batch_ids = item.batch_ids
                if self._on_lost is None:
                    raise err
                self._on_lost(err)
            elif isinstance(item, _Note):
                st.cursor, st.epoch = 0, item.epoch
                st.last.clear()
                if self._on_restart is None:
                    raise item.exc
                self._on_restart(item.exc)
        return None

    def state(self):
        """A ``SubscriberState`` to save: resume from it with ``resume=``.
        It covers exactly the batches returned so far by ``recv``."""
        st = self._saved
        return SubscriberState(st.cursor, dict(st.last), st.epoch)

    @property
    def stats(self):
        return dict(self._tr.stats)


class Subscriber(_Base):
    """Blocking subscriber.

    ``Subscriber(pub_endpoint, query_endpoint, prefixes=[...], exact=[...])``
    subscribes to aggregates whose name starts with one of ``prefixes`` and
    to the aggregates named in ``exact`` (neither: everything). Iterate it,
    or call ``recv(timeout)``, to get ``Batch`` objects.

    ``resume``: a saved ``SubscriberState``: carry on exactly after it.
    ``from_seq``: deliver first every retained batch of the subscription
    holding a seq greater than it, then live batches.
    ``rcvhwm``/``rcvbuf``: the SUB socket's ZeroMQ receive high-water mark
    and kernel receive buffer (bigger: fewer gaps to fill).
    ``idle_check``, ``sync_interval``: see the module documentation.
    ``fetch_timeout``, ``fetch_retries``: each fetch waits that long for its
    reply and is asked again that many times before ``AckTimeout``.
    ``on_data_lost(DataLostError)``, ``on_restart(BrokerRestarted)``:
    callbacks instead of raising from ``recv``.
    CURVE: ``server_public_key``, ``public_key``, ``secret_key`` apply to
    both sockets.
    """

    def __init__(self, pub_endpoint, query_endpoint, *, prefixes=(), exact=(), resume=None,
                 from_seq=None, rcvhwm=100000, rcvbuf=None, idle_check=0.25, sync_interval=1.0,
                 fetch_timeout=5.0, fetch_retries=3, headers_only=None, on_data_lost=None,
                 on_restart=None, server_public_key=None, public_key=None, secret_key=None,
                 context=None):
        self._setup(prefixes, exact, resume, from_seq, idle_check, sync_interval,
                    fetch_timeout, fetch_retries, headers_only, on_data_lost, on_restart)
        ctx = context or zmq.Context.instance()
        curve = dict(server_public_key=server_public_key, public_key=public_key,
                     secret_key=secret_key)
        self._q = make_socket(ctx, zmq.DEALER, query_endpoint, curve=curve, rcvhwm=1000)
        try:
            hello = self._hello()          # before subscribing: the start cursor
            self._sub = make_socket(ctx, zmq.SUB, pub_endpoint, rcvhwm=rcvhwm, rcvbuf=rcvbuf,
                                    curve=curve)
        except BaseException:
            self._q.close(0)
            raise
        for t in self._topics():
            self._sub.setsockopt(zmq.SUBSCRIBE, t)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"\x00")   # EpochEnd, whatever the topics
        self._start_state(hello)
        self._next_sync = time.monotonic() + sync_interval
        self._last_rx = time.monotonic()

    # --- I/O

    def _request(self, make, parse):
        budget = self._request_budget()
        stop = None if budget is None else time.monotonic() + budget
        for attempt in range(self._fretries + 1):
            rid, data = make()
            self._q.send(data)
            end = time.monotonic() + self._ftimeout
            if stop is not None:
                end = min(end, stop)
            while True:
                left = end - time.monotonic()
                if left <= 0 or not self._q.poll(int(left * 1000) + 1):
                    break
                r = parse(rid, self._q.recv_multipart())
                if r is not None:
                    return r
            if stop is not None and time.monotonic() >= stop:
                break
        raise AckTimeout("no reply from the query socket")

    def _hello(self):
        def make():
            self._rid += 1
            return self._rid, encode(self._rid, hello=pb.Hello(client="snapbus-python sub"))
        return self._request(make, self._hello_result)

    def _run(self, gen):
        try:
            f = next(gen)
            while True:
                f = gen.send(self._request(lambda: self._fetch_request(f), self._fetch_result))
        except StopIteration:
            pass
        finally:
            gen.close()

    def _guard(self, gen):
        try:
            self._run(gen)
        except _Restart:
            pass
        except AckTimeout:
            if self._end_failed():
                return                             # reported in stream order
            self._need_sweep = True
            raise
        except BaseException:
            # The fill did not finish: a later sweep will pick up what is
            # missing if the application carries on.
            self._need_sweep = True
            raise

    # --- API

    def recv(self, timeout=None):
        """The next batch, waiting up to ``timeout`` seconds (None: forever);
        None on timeout. Raises DataLostError / BrokerRestarted (unless the
        callbacks are set) and AckTimeout when the query socket is silent."""
        end = None if timeout is None else time.monotonic() + timeout
        tr = self._tr
        while True:
            item = self._pop()
            if item is not None:
                return item
            if self._catchup is not None:
                fs, self._catchup = self._catchup, None
                self._guard(tr.sweep(from_seq=fs))
                continue
            if self._need_sweep:
                self._need_sweep = False
                self._guard(tr.sweep())
                continue
            now = time.monotonic()
            due = self._last_rx + self._idle
            if not tr.all:
                due = min(due, self._next_sync)
            wait = due - now
            if end is not None:
                wait = min(wait, end - now)
            if self._sub.poll(max(0, int(wait * 1000)) if wait > 0 else 0):
                self._last_rx = time.monotonic()
                while not tr.out:
                    try:
                        frames = self._sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if self._on_marker(frames):
                        break                      # sweep through the end now
                    b = _parse_live(frames, tr.stats)
                    if b is None:
                        continue
                    if b.batch_id < self._last_live_id:
                        self._probe()              # ids went back: restarted?
                    self._last_live_id = b.batch_id
                    self._guard(tr.on_live(b))
                continue
            now = time.monotonic()
            if now >= self._last_rx + self._idle:
                self._last_rx = now
                self._probe()
            if not tr.all and now >= self._next_sync:
                self._next_sync = now + self._sync
                self._need_sweep = True
            if end is not None and time.monotonic() >= end and not tr.out and not self._need_sweep:
                return None

    def _probe(self):
        """Hello on the query socket: restarted? anything past the cursor?"""
        h = self._hello()
        try:
            self._check_epoch(h.epoch, h.last_batch_id, h.last_seq)
        except _Restart:
            return
        if h.last_batch_id > self._tr.cursor:
            self._need_sweep = True

    def __iter__(self):
        while True:
            yield self.recv()

    def close(self):
        if not self.closed:
            self.closed = True
            self._sub.close(0)
            self._q.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncSubscriber(_Base):
    """The same subscriber for asyncio (``zmq.asyncio``)::

        sub = AsyncSubscriber(pub_ep, query_ep, prefixes=["e3/"])
        async for batch in sub:
            ...

    The hello and the subscription happen on the first ``recv``. Takes the
    same parameters as ``Subscriber`` (``context``: a ``zmq.asyncio.Context``).
    """

    def __init__(self, pub_endpoint, query_endpoint, *, prefixes=(), exact=(), resume=None,
                 from_seq=None, rcvhwm=100000, rcvbuf=None, idle_check=0.25, sync_interval=1.0,
                 fetch_timeout=5.0, fetch_retries=3, headers_only=None, on_data_lost=None,
                 on_restart=None, server_public_key=None, public_key=None, secret_key=None,
                 context=None):
        import zmq.asyncio
        self._setup(prefixes, exact, resume, from_seq, idle_check, sync_interval,
                    fetch_timeout, fetch_retries, headers_only, on_data_lost, on_restart)
        ctx = context or zmq.asyncio.Context.instance()
        self._curve = dict(server_public_key=server_public_key, public_key=public_key,
                           secret_key=secret_key)
        self._ctx, self._pub_ep, self._rcvhwm, self._rcvbuf = ctx, pub_endpoint, rcvhwm, rcvbuf
        self._q = make_socket(ctx, zmq.DEALER, query_endpoint, curve=self._curve, rcvhwm=1000)
        self._sub = None

    async def _request(self, make, parse):
        budget = self._request_budget()
        stop = None if budget is None else time.monotonic() + budget
        for attempt in range(self._fretries + 1):
            rid, data = make()
            await self._q.send(data)
            end = time.monotonic() + self._ftimeout
            if stop is not None:
                end = min(end, stop)
            while True:
                left = end - time.monotonic()
                if left <= 0 or not await self._q.poll(int(left * 1000) + 1):
                    break
                r = parse(rid, await self._q.recv_multipart())
                if r is not None:
                    return r
            if stop is not None and time.monotonic() >= stop:
                break
        raise AckTimeout("no reply from the query socket")

    async def _hello(self):
        def make():
            self._rid += 1
            return self._rid, encode(self._rid, hello=pb.Hello(client="snapbus-python sub"))
        return await self._request(make, self._hello_result)

    async def start(self):
        """Hello, then subscribe. Called by the first recv if not before."""
        if self._sub is not None:
            return
        hello = await self._hello()
        self._sub = make_socket(self._ctx, zmq.SUB, self._pub_ep, rcvhwm=self._rcvhwm,
                                rcvbuf=self._rcvbuf, curve=self._curve)
        for t in self._topics():
            self._sub.setsockopt(zmq.SUBSCRIBE, t)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"\x00")
        self._start_state(hello)
        self._next_sync = time.monotonic() + self._sync
        self._last_rx = time.monotonic()

    async def _guard(self, gen):
        try:
            try:
                f = next(gen)
                while True:
                    rep = await self._request(lambda: self._fetch_request(f), self._fetch_result)
                    f = gen.send(rep)
            except StopIteration:
                pass
            finally:
                gen.close()
        except _Restart:
            pass
        except AckTimeout:
            if self._end_failed():
                return
            self._need_sweep = True
            raise
        except BaseException:
            self._need_sweep = True
            raise

    async def _probe(self):
        h = await self._hello()
        try:
            self._check_epoch(h.epoch, h.last_batch_id, h.last_seq)
        except _Restart:
            return
        if h.last_batch_id > self._tr.cursor:
            self._need_sweep = True

    async def recv(self, timeout=None):
        """As ``Subscriber.recv``."""
        await self.start()
        end = None if timeout is None else time.monotonic() + timeout
        tr = self._tr
        while True:
            item = self._pop()
            if item is not None:
                return item
            if self._catchup is not None:
                fs, self._catchup = self._catchup, None
                await self._guard(tr.sweep(from_seq=fs))
                continue
            if self._need_sweep:
                self._need_sweep = False
                await self._guard(tr.sweep())
                continue
            now = time.monotonic()
            due = self._last_rx + self._idle
            if not tr.all:
                due = min(due, self._next_sync)
            wait = due - now
            if end is not None:
                wait = min(wait, end - now)
            if await self._sub.poll(max(0, int(wait * 1000)) if wait > 0 else 0):
                self._last_rx = time.monotonic()
                while not tr.out:
                    try:
                        frames = await self._sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if self._on_marker(frames):
                        break
                    b = _parse_live(frames, tr.stats)
                    if b is None:
                        continue
                    if b.batch_id < self._last_live_id:
                        await self._probe()
                    self._last_live_id = b.batch_id
                    await self._guard(tr.on_live(b))
                continue
            now = time.monotonic()
            if now >= self._last_rx + self._idle:
                self._last_rx = now
                await self._probe()
            if not tr.all and now >= self._next_sync:
                self._next_sync = now + self._sync
                self._need_sweep = True
            if end is not None and time.monotonic() >= end and not tr.out and not self._need_sweep:
                return None

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.recv()

    def close(self):
        if not self.closed:
            self.closed = True
            if self._sub is not None:
                self._sub.close(0)
            self._q.close(0)

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        self.close()
