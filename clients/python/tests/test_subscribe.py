"""Subscriber against the real broker: gap detection and fill after a
stall, catch-up, resume from a saved state or a seq, asyncio, restarts."""

import asyncio
import os
import time
import unittest

import _broker

import snapbus
from snapbus import AckLevel

B = None


def setUpModule():
    global B
    B = _broker.Broker("--default-delay-ms", "0")


def tearDownModule():
    rc = B.stop()
    log = B.log_text()
    B.cleanup()
    if rc != 0:
        raise AssertionError("snapbusd exit status %r; log:\n%s" % (rc, log))


def publish(endpoint, items, **kw):
    """items: (aggregate, payload); one event per request (so one batch
    each, with delay 0). Returns the seqs."""
    kw.setdefault("batch_events", 1)
    with snapbus.Publisher(endpoint, **kw) as p:
        rs = [p.send(a, "T", pl) for a, pl in items]
        p.flush()
        return [r.result().seq for r in rs]


def read_events(sub, pred, want, timeout=60.0):
    """Reads until `want` events matching pred arrived; returns (events, batches)."""
    evs, batches = [], []
    end = time.monotonic() + timeout
    while len(evs) < want and time.monotonic() < end:
        b = sub.recv(timeout=0.5)
        if b is None:
            continue
        batches.append(b)
        evs.extend(e for e in b.events if pred(e))
    return evs, batches


class TestStalledSubscriber(unittest.TestCase):
    """Subscribers with a one-message receive queue and a tiny kernel buffer
    do not read while 16 MB of batches go by, so the broker's PUB socket
    drops most batches for them. When they read again they must detect the
    gaps, fill them from the retained batches and end with every event
    exactly once, in order per aggregate."""

    N, AGGS, SIZE = 4000, 4, 4096

    def test_gap_fill_after_stall(self):
        b = _broker.Broker("--default-delay-ms", "0", "--hwm", "20")
        subs = {}
        try:
            subs["all"] = snapbus.Subscriber(b.pub, b.query, rcvhwm=1, rcvbuf=4096)
            subs["prefix"] = snapbus.Subscriber(b.pub, b.query, prefixes=["gap/"],
                                                rcvhwm=1, rcvbuf=4096)
            subs["exact"] = snapbus.Subscriber(b.pub, b.query, exact=["gap/1"],
                                               rcvhwm=1, rcvbuf=4096)
            items = [("gap/%d" % (i % self.AGGS), i.to_bytes(4, "big") * (self.SIZE // 4))
                     for i in range(self.N)]
            seqs = publish(b.ingest, items, window=8)   # below hwm/2: PROTOCOL.md 11.3
            by_agg = {}
            for (agg, _), s in zip(items, seqs):
                by_agg.setdefault(agg, []).append(s)
            for name, sub in subs.items():
                want = by_agg["gap/1"] if name == "exact" else seqs
                evs, batches = read_events(sub, lambda e: e.aggregate.startswith("gap/"),
                                           len(want))
                with self.subTest(subscriber=name):
                    got = [e.seq for e in evs]
                    self.assertEqual(len(got), len(set(got)), "an event came twice")
                    self.assertEqual(sorted(got), want)
                    for agg, lst in by_agg.items():
                        if name != "exact" or agg == "gap/1":
                            self.assertEqual([e.seq for e in evs if e.aggregate == agg], lst)
                    for e in evs:
                        i = items[seqs.index(e.seq)]
                        self.assertEqual(e.payload, i[1])
                    st = sub.stats
                    self.assertGreater(st["gaps"], 0, st)
                    self.assertGreater(st["recovered"], 0, st)
                    self.assertEqual(st["lost"], 0, st)
                    # Nothing more arrives: no duplicates after the end.
                    self.assertIsNone(sub.recv(timeout=0.6))
        finally:
            for s in subs.values():
                s.close()
            rc = b.stop()
            b.cleanup()
        self.assertEqual(rc, 0)


class TestResume(unittest.TestCase):
    def test_resume_from_saved_state(self):
        pred = lambda e: e.aggregate.startswith("res/")
        s1 = snapbus.Subscriber(B.pub, B.query, prefixes=["res/"])
        first = publish(B.ingest, [("res/%s" % "ab"[i % 2], b"%d" % i) for i in range(100)])
        evs1 = []
        while len(evs1) < 40:
            bt = s1.recv(timeout=10)
            self.assertIsNotNone(bt)
            evs1.extend(bt.events)
        saved = snapbus.SubscriberState.from_json(s1.state().to_json())
        s1.close()
        second = publish(B.ingest, [("res/%s" % "abc"[i % 3], b"x") for i in range(50)])
        with snapbus.Subscriber(B.pub, B.query, prefixes=["res/"], resume=saved) as s2:
            evs2, _ = read_events(s2, pred, 60 + 50)
            self.assertIsNone(s2.recv(timeout=0.6))
        got = [e.seq for e in evs1 + evs2]
        self.assertEqual(sorted(got), first + second)
        self.assertEqual(len(got), len(set(got)))

    def test_resume_everything_subscriber(self):
        s1 = snapbus.Subscriber(B.pub, B.query)
        first = publish(B.ingest, [("rall/x", b"%d" % i) for i in range(30)])
        seen = []
        while len(seen) < 10:
            bt = s1.recv(timeout=10)
            seen.extend(e.seq for e in bt.events if e.aggregate == "rall/x")
        saved = s1.state()
        s1.close()
        second = publish(B.ingest, [("rall/x", b"y") for i in range(5)])
        with snapbus.Subscriber(B.pub, B.query, resume=saved) as s2:
            evs, _ = read_events(s2, lambda e: e.aggregate == "rall/x", 25)
        self.assertEqual(seen + [e.seq for e in evs], first + second)

    def test_resume_from_seq(self):
        seqs = publish(B.ingest, [("fseq/%s" % "ab"[i % 2], b"%d" % i) for i in range(40)])
        a = [s for i, s in enumerate(seqs) if i % 2 == 0]
        # Exactly one aggregate, from a seq of it: exact (PROTOCOL.md 10.4).
        with snapbus.Subscriber(B.pub, B.query, exact=["fseq/a"], from_seq=a[9]) as s:
            evs, _ = read_events(s, lambda e: True, len(a) - 10)
            self.assertEqual([e.seq for e in evs], a[10:])
            self.assertIsNone(s.recv(timeout=0.6))
        # A prefix, from a seq: every batch holding a later seq.
        with snapbus.Subscriber(B.pub, B.query, prefixes=["fseq/"], from_seq=seqs[19]) as s:
            evs, _ = read_events(s, lambda e: True, 20)
            self.assertEqual(sorted(e.seq for e in evs), seqs[20:])

    def test_late_join_from_zero(self):
        seqs = publish(B.ingest, [("late/x", b"%d" % i) for i in range(10)])
        with snapbus.Subscriber(B.pub, B.query, exact=["late/x"], from_seq=0) as s:
            evs, _ = read_events(s, lambda e: True, 10)
        self.assertEqual([e.seq for e in evs], seqs)


class TestAsync(unittest.TestCase):
    def test_async_subscriber(self):
        async def main():
            sub = snapbus.AsyncSubscriber(B.pub, B.query, prefixes=["async/"])
            await sub.start()
            seqs = publish(B.ingest, [("async/%d" % (i % 2), b"%d" % i) for i in range(20)])
            got = []
            async for b in sub:
                got.extend(e.seq for e in b.events)
                if len(got) >= 20:
                    break
            self.assertIsNone(await sub.recv(timeout=0.6))
            sub.close()
            return seqs, got
        seqs, got = asyncio.run(asyncio.wait_for(main(), 60))
        self.assertEqual(sorted(got), seqs)


class TestRestart(unittest.TestCase):
    def test_broker_restart_is_detected(self):
        b1 = _broker.Broker("--default-delay-ms", "0")
        eps = (b1.ingest, b1.pub, b1.query)
        sub = None
        b2 = None
        try:
            sub = snapbus.Subscriber(b1.pub, b1.query, idle_check=0.1)
            publish(b1.ingest, [("rs/x", b"old")] * 5)
            evs, _ = read_events(sub, lambda e: True, 5)
            self.assertEqual(len(evs), 5)
            self.assertEqual(b1.stop(), 0)
            # The same endpoints, a new broker with nothing published.
            b2 = _broker.Broker("--default-delay-ms", "0", endpoints=eps)
            seqs = publish(b2.ingest, [("rs/x", b"new")] * 3)
            restarted = 0
            evs = []
            end = time.monotonic() + 30
            while len(evs) < 3 and time.monotonic() < end:
                try:
                    bt = sub.recv(timeout=0.5)
                except snapbus.BrokerRestarted:
                    restarted += 1
                    continue
                if bt is not None:
                    evs.extend(bt.events)
            self.assertEqual(restarted, 1)
            self.assertEqual([e.seq for e in evs], seqs)
            self.assertEqual([e.payload for e in evs], [b"new"] * 3)
        finally:
            if sub:
                sub.close()
            b1.cleanup()
            if b2:
                self.assertEqual(b2.stop(), 0)
                b2.cleanup()

    def test_restart_on_the_same_log_continues(self):
        # A broker restarted on its data directory keeps counting seqs and
        # batch ids and serves the old batches from its log: the subscriber
        # carries on without losing or repeating anything.
        b1 = _broker.Broker("--default-delay-ms", "0")
        eps, data = (b1.ingest, b1.pub, b1.query), os.path.join(b1.dir, "data")
        sub = None
        b2 = None
        try:
            sub = snapbus.Subscriber(b1.pub, b1.query, prefixes=["cont/"], idle_check=0.1)
            seqs = publish(b1.ingest, [("cont/%d" % (i % 2), b"a") for i in range(6)])
            evs, _ = read_events(sub, lambda e: True, 3)
            self.assertEqual(b1.stop(), 0)
            b2 = _broker.Broker("--default-delay-ms", "0", endpoints=eps, data_dir=data)
            seqs += publish(b2.ingest, [("cont/%d" % (i % 2), b"b") for i in range(6)])
            more, _ = read_events(sub, lambda e: True, 12 - len(evs))
            evs += more
            self.assertIsNone(sub.recv(timeout=0.6))
            self.assertEqual(sorted(e.seq for e in evs), seqs)
            self.assertEqual(len(seqs), len(set(seqs)))
            self.assertEqual(len(evs), 12)
        finally:
            if sub:
                sub.close()
            b1.cleanup()
            if b2:
                self.assertEqual(b2.stop(), 0)
                b2.cleanup()


if __name__ == "__main__":
    unittest.main()
