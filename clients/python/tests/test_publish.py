"""Publisher against the real broker: ack levels, window, wire batching,
non-blocking send, typed errors, producer fields, resends, 100,000 events."""

import os
import shutil
import tempfile
import time
import unittest

import _broker
import zmq

import snapbus
from snapbus import AckLevel

B = None


def setUpModule():
    global B
    # delay 0 for most aggregates; "slow/*" batches are held 1 s (to keep
    # ACK_PUBLISHED replies outstanding on purpose).
    B = _broker.Broker("--default-delay-ms", "0", "--delay", "slow/*=1000")


def tearDownModule():
    rc = B.stop()
    log = B.log_text()
    B.cleanup()
    if rc != 0:
        raise AssertionError("snapbusd exit status %r; log:\n%s" % (rc, log))


def drain(sub, want_events, timeout=30.0):
    """Reads batches until want_events events arrived (or timeout)."""
    events = []
    end = time.monotonic() + timeout
    while len(events) < want_events and time.monotonic() < end:
        b = sub.recv(timeout=0.5)
        if b is not None:
            events.extend(b.events)
    return events


class TestAckLevels(unittest.TestCase):
    def setUp(self):
        self.p = snapbus.Publisher(B.ingest)

    def tearDown(self):
        self.p.close()

    def test_hello_limits(self):
        h = self.p.hello
        self.assertTrue(h.broker.startswith("snapbusd"))
        self.assertEqual(h.max_events_per_request, 8192)
        self.assertEqual(h.max_name_bytes, 255)
        self.assertNotEqual(self.p.epoch, 0)

    def test_sequenced(self):
        a = self.p.publish("ack/seq", "T", b"1")
        b = self.p.publish("ack/seq", "T", b"2")
        self.assertGreater(a.seq, 0)
        self.assertEqual(b.seq, a.seq + 1)
        self.assertEqual(b.aggregate_seq, a.aggregate_seq + 1)
        self.assertEqual(a.batch_id, 0)

    def test_published_carries_batch_id(self):
        ack = self.p.publish("ack/pub", "T", b"x", ack=AckLevel.PUBLISHED)
        self.assertGreater(ack.seq, 0)
        self.assertGreater(ack.batch_id, 0)

    def test_none_then_sequenced(self):
        rs = [self.p.send("ack/none", "T", b"%d" % i, ack=AckLevel.NONE) for i in range(10)]
        last = self.p.publish("ack/none", "T", b"end")
        for r in rs:
            self.assertEqual(r.result(0), snapbus.Ack())   # done once sent; seq not reported
        # Fire-and-forget events were sequenced before the acked one.
        self.assertEqual(last.aggregate_seq, 11)

    def test_none_refusal_is_reported(self):
        bad = self.p.send("", "T", ack=AckLevel.NONE)
        self.p.flush()
        end = time.monotonic() + 10
        while bad.exception(0) is None and time.monotonic() < end:
            self.p.poll(0.05)
        self.assertIsInstance(bad.exception(0), snapbus.InvalidError)

    def test_durable(self):
        # Served by brokers with the on-disk log; refused, typed, by others.
        try:
            ack = self.p.publish("ack/durable", "T", b"x", ack=AckLevel.DURABLE)
        except snapbus.UnsupportedError as e:
            self.assertEqual(e.scope, "request")
            self.assertEqual(e.code, 7)
        else:
            self.assertGreater(ack.seq, 0)

    def test_event_fields_reach_subscribers(self):
        sub = snapbus.Subscriber(B.pub, B.query, exact=["fields/x"])
        try:
            p = snapbus.Publisher(B.ingest, producer_id="prod-1", producer_seq_start=41)
            r1 = p.send("fields/x", "Commit", b"\x01\x02", event_id="ev-1", source_pos=0,
                        client_ts_ms=1234)
            r2 = p.send("fields/x", "Effect", b"", caused_by=0)
            r3 = p.send("fields/x", "Other", b"z", producer_seq=7, source_pos=100)
            p.flush()
            seqs = [r.result().seq for r in (r1, r2, r3)]
            p.close()
            evs = drain(sub, 3)
        finally:
            sub.close()
        self.assertEqual([e.seq for e in evs], seqs)
        e1, e2, e3 = evs
        self.assertEqual((e1.aggregate, e1.type, e1.payload, e1.event_id, e1.source_pos,
                          e1.producer_id, e1.producer_seq, e1.client_ts_ms),
                         ("fields/x", "Commit", b"\x01\x02", "ev-1", 0, "prod-1", 41, 1234))
        self.assertEqual((e2.source_pos, e2.producer_seq, e2.payload), (None, 42, b""))
        self.assertEqual((e3.source_pos, e3.producer_seq), (100, 7))


class TestTypedErrors(unittest.TestCase):
    def setUp(self):
        self.p = snapbus.Publisher(B.ingest, linger_ms=1000)   # one request for all

    def tearDown(self):
        self.p.close()

    def test_bad_events_in_one_request(self):
        good1 = self.p.send("err/a", "T", b"1")
        no_agg = self.p.send("", "T", b"2")
        no_type = self.p.send("err/a", "", b"3")
        long_name = self.p.send("x" * 256, "T", b"4")
        good2 = self.p.send("err/a", "T", b"5")
        self.p.flush()
        self.assertEqual(len({r.request_id for r in (good1, no_agg, good2)}), 1)
        with self.assertRaises(snapbus.InvalidError) as cm:
            no_agg.result()
        self.assertEqual(cm.exception.scope, "event")
        self.assertEqual(cm.exception.code, 1)
        self.assertRaises(snapbus.InvalidError, no_type.result)
        with self.assertRaises(snapbus.TooLargeError) as cm:
            long_name.result()
        # The broker's detail names the field, the value and the limit.
        self.assertEqual(cm.exception.detail,
                         "aggregate 256 B > limit %d (limits.max_name_bytes)"
                         % self.p.hello.max_name_bytes)
        # The other events of the request were accepted, in request order.
        self.assertEqual(good2.result().seq, good1.result().seq + 1)

    def test_local_type_error_leaves_the_batch_intact(self):
        r1 = self.p.send("err/local", "T", b"1")
        with self.assertRaises(TypeError):
            self.p.send("err/local", "T", "not bytes")
        r2 = self.p.send("err/local", "T", b"2")
        self.p.flush()
        self.assertEqual(r2.result().seq, r1.result().seq + 1)

    def test_every_error_code_has_a_class(self):
        for v in snapbus.pb.ErrorCode.values():
            if v == 0:
                continue
            e = snapbus.error_for(v, "d")
            self.assertIsInstance(e, snapbus.BrokerError)
            self.assertNotIsInstance(e, snapbus.UnknownBrokerError, v)
            self.assertEqual(e.code, v)
            self.assertEqual(e.name, snapbus.pb.ErrorCode.Name(v))
        self.assertIsInstance(snapbus.error_for(999), snapbus.UnknownBrokerError)

    def test_oversized_event_refused_locally(self):
        big = b"x" * (self.p.hello.max_message_bytes + 1)
        with self.assertRaises(snapbus.TooLargeError):
            self.p.send("err/big", "T", big)

    def test_payload_over_limit_is_refused_by_the_broker(self):
        n = self.p.hello.max_payload_bytes + 1
        r = self.p.send("err/big", "T", b"x" * n)
        with self.assertRaises(snapbus.TooLargeError) as cm:
            r.result()
        self.assertEqual(cm.exception.scope, "event")
        self.assertEqual(cm.exception.detail,
                         "payload %d B > limit %d (limits.max_payload_bytes)" % (n, n - 1))


class TestWindowAndBackpressure(unittest.TestCase):
    def test_nonblocking_send_raises_try_again_when_window_full(self):
        # window 1, one event per request, PUBLISHED acks held by a 1 s delay:
        # the first request stays in flight, the second event waits in the
        # open batch, the third finds nowhere to go.
        p = snapbus.Publisher(B.ingest, ack=AckLevel.PUBLISHED, window=1, batch_events=1)
        try:
            r1 = p.send("slow/a", "T", b"1", block=False)
            self.assertEqual(p.in_flight, 1)
            r2 = p.send("slow/a", "T", b"2", block=False)
            with self.assertRaises(snapbus.TryAgain):
                p.send("slow/a", "T", b"3", block=False)
            # A blocking send waits for room instead.
            r3 = p.send("slow/a", "T", b"3")
            self.assertTrue(p.flush(timeout=30))
            seqs = [r.result().seq for r in (r1, r2, r3)]
            self.assertEqual(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2])
            self.assertTrue(all(r.result().batch_id > 0 for r in (r1, r2, r3)))
        finally:
            p.close()

    def test_wire_batching(self):
        p = snapbus.Publisher(B.ingest, batch_events=100, linger_ms=60000)
        try:
            rs = [p.send("wire/b", "T", b"x") for _ in range(1000)]
            p.flush()
            self.assertEqual(p.stats["requests"], 10)
            self.assertEqual(len({r.request_id for r in rs}), 10)
            seqs = [r.result().seq for r in rs]
            self.assertEqual(seqs, list(range(seqs[0], seqs[0] + 1000)))
        finally:
            p.close()

    def test_batch_bytes(self):
        p = snapbus.Publisher(B.ingest, batch_bytes=10000, linger_ms=60000)
        try:
            rs = [p.send("wire/bytes", "T", b"x" * 1000) for _ in range(50)]
            p.flush()
            per = {}
            for r in rs:
                per[r.request_id] = per.get(r.request_id, 0) + 1
            self.assertTrue(all(n <= 10 for n in per.values()), per)
            self.assertEqual(sum(per.values()), 50)
            self.assertTrue(all(r.result().seq for r in rs))
        finally:
            p.close()


class TestResend(unittest.TestCase):
    def test_duplicate_resend(self):
        # PUBLISHING.md: a resend with the same producer id/seq and event
        # id is answered ERR_DUPLICATE carrying the original seq; nothing
        # new is sequenced and subscribers see the event once.
        sub = snapbus.Subscriber(B.pub, B.query, exact=["dup/x"])
        p = snapbus.Publisher(B.ingest, producer_id="resender")
        strict = snapbus.Publisher(B.ingest, producer_id="resender",
                                   duplicate_is_error=True)
        try:
            first = p.publish("dup/x", "T", b"payload", event_id="order-17", producer_seq=17)
            again = p.publish("dup/x", "T", b"payload", event_id="order-17", producer_seq=17)
            self.assertFalse(first.duplicate)
            self.assertTrue(again.duplicate)
            self.assertEqual((again.seq, again.aggregate_seq),
                             (first.seq, first.aggregate_seq))
            with self.assertRaises(snapbus.DuplicateError) as cm:
                strict.publish("dup/x", "T", b"payload", producer_seq=17)
            self.assertEqual(cm.exception.seq, first.seq)
            # Only the event id: still the original.
            by_id = p.publish("dup/x", "T", b"payload", event_id="order-17",
                              producer_seq=18)
            self.assertTrue(by_id.duplicate)
            self.assertEqual(by_id.seq, first.seq)
            marker = p.publish("dup/x", "T", b"end", producer_seq=19)
            evs = drain(sub, 2)
            self.assertEqual([e.seq for e in evs], [first.seq, marker.seq])
            self.assertEqual(marker.seq, first.seq + 1)  # no seq was used up
        finally:
            p.close()
            strict.close()
            sub.close()

    def test_beyond_the_horizon(self):
        # The broker runs with its default window (65536 producer seqs per
        # producer): a seq below hi - window + 1 is refused, typed.
        p = snapbus.Publisher(B.ingest, producer_id="horizon-py")
        try:
            p.publish("dup/h", "T", b"x", producer_seq=100000)
            with self.assertRaises(snapbus.BeyondDedupHorizonError):
                p.publish("dup/h", "T", b"x", producer_seq=5)
        finally:
            p.close()


class TestCurveOptions(unittest.TestCase):
    def test_keys_become_socket_options(self):
        from snapbus._conn import apply_curve
        spub, _ = zmq.curve_keypair()
        cpub, csec = zmq.curve_keypair()
        s = zmq.Context.instance().socket(zmq.DEALER)
        try:
            apply_curve(s, server_public_key=spub.decode(), public_key=cpub, secret_key=csec)
            self.assertEqual(s.getsockopt(zmq.MECHANISM), zmq.CURVE)
            self.assertEqual(s.getsockopt(zmq.CURVE_SERVER), 0)   # we are the client
        finally:
            s.close(0)
        s = zmq.Context.instance().socket(zmq.DEALER)
        try:
            with self.assertRaises(ValueError):
                apply_curve(s, server_public_key="short")
        finally:
            s.close(0)

    def test_curve_client_gets_nothing_into_a_null_broker(self):
        spub, _ = zmq.curve_keypair()
        with self.assertRaises(snapbus.AckTimeout):
            snapbus.Publisher(B.ingest, server_public_key=spub, hello_timeout=0.5)


class TestAgainstCurveBroker(unittest.TestCase):
    """The keyword arguments against a broker that runs CURVE with
    allowlists (docs/SECURITY.md): listed keys publish and subscribe
    (the subscriber's query socket included), a subscriber's key cannot
    publish, a plain client gets nothing in."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="sbpy-curve.")
        self.srv_pub, srv_sec = zmq.curve_keypair()
        self.pub_pub, self.pub_sec = zmq.curve_keypair()
        self.sub_pub, self.sub_sec = zmq.curve_keypair()
        paths = {}
        for name, text in (("server.key", b"# secret\n" + srv_sec + b"\n"),
                           ("pubs.keys", self.pub_pub + b" # publisher\n"),
                           ("subs.keys", self.sub_pub + b"\n")):
            paths[name] = os.path.join(self.dir, name)
            with open(paths[name], "wb") as f:
                f.write(text)
        os.chmod(paths["server.key"], 0o600)  # as keygen makes it
        self.b = _broker.Broker("--default-delay-ms", "0",
                                "--secret-key-file", paths["server.key"],
                                "--publisher-keys", paths["pubs.keys"],
                                "--subscriber-keys", paths["subs.keys"])

    def tearDown(self):
        self.b.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_listed_keys_work_and_roles_hold(self):
        b = self.b
        sub = snapbus.Subscriber(b.pub, b.query, prefixes=["py-curve/"],
                                 server_public_key=self.srv_pub,
                                 public_key=self.sub_pub, secret_key=self.sub_sec)
        p = snapbus.Publisher(b.ingest, ack=AckLevel.SEQUENCED,
                              server_public_key=self.srv_pub,
                              public_key=self.pub_pub, secret_key=self.pub_sec)
        try:
            got = []
            end = time.monotonic() + 20
            while not got and time.monotonic() < end:
                r = p.send("py-curve/1", "T", b"secret stuff")
                self.assertTrue(p.flush(timeout=10))
                self.assertGreater(r.result().seq, 0)
                bt = sub.recv(timeout=0.5)
                while bt is not None:
                    got += [e.payload for e in bt.events]
                    bt = sub.recv(timeout=0.2)
            self.assertIn(b"secret stuff", got)
        finally:
            p.close()
            sub.close()
        # A plain client and a subscriber's key get nothing in.
        with self.assertRaises(snapbus.AckTimeout):
            snapbus.Publisher(b.ingest, hello_timeout=0.5)
        # A key on no list of the role is told so at once (the socket
        # monitor sees the broker's refusal), not left to time out.
        t0 = time.monotonic()
        with self.assertRaises(snapbus.UnauthorizedError):
            snapbus.Publisher(b.ingest, server_public_key=self.srv_pub,
                              public_key=self.sub_pub, secret_key=self.sub_sec,
                              hello_timeout=30)
        self.assertLess(time.monotonic() - t0, 25)
        with self.assertRaises(snapbus.UnauthorizedError):
            snapbus.Subscriber(b.pub, b.query, prefixes=["x/"],
                               server_public_key=self.srv_pub,
                               public_key=self.pub_pub, secret_key=self.pub_sec,
                               fetch_timeout=30, fetch_retries=0)


class TestHundredThousand(unittest.TestCase):
    N = 100000

    def test_100k_acked_nothing_lost(self):
        sub = snapbus.Subscriber(B.pub, B.query, prefixes=[""])   # everything
        p = snapbus.Publisher(B.ingest, ack=AckLevel.SEQUENCED, window=64)
        try:
            rs = [p.send("bulk/%d" % (i % 16), "T", b"%d" % i) for i in range(self.N)]
            self.assertTrue(p.flush(timeout=120))
            seqs = [r.result().seq for r in rs]
            self.assertEqual(len(set(seqs)), self.N)
            self.assertEqual(seqs, list(range(seqs[0], seqs[0] + self.N)))
            self.assertEqual(p.stats["acked"], self.N)
            self.assertLessEqual(p.stats["requests"], self.N)

            got = {}
            end = time.monotonic() + 120
            while len(got) < self.N and time.monotonic() < end:
                b = sub.recv(timeout=1.0)
                if b is None:
                    continue
                for e in b.events:
                    if e.aggregate.startswith("bulk/"):
                        self.assertNotIn(e.seq, got)
                        got[e.seq] = e.payload
            self.assertEqual(len(got), self.N)
            first = seqs[0]
            self.assertTrue(all(got[first + i] == b"%d" % i for i in range(self.N)))
        finally:
            p.close()
            sub.close()


if __name__ == "__main__":
    unittest.main()
