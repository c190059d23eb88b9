"""docs/PROTOCOL.md against the real broker, with raw pyzmq and the module
generated from proto/snapbus.proto (not the client library): the worked
example byte by byte, and the points of the document the Python client
relies on."""

import time
import unittest

import _broker
import zmq

from snapbus import pb

B = None
CTX = zmq.Context.instance()


def setUpModule():
    global B
    B = _broker.Broker("--default-delay-ms", "0")


def tearDownModule():
    rc = B.stop()
    log = B.log_text()
    B.cleanup()
    if rc != 0:
        raise AssertionError("snapbusd exit status %r; log:\n%s" % (rc, log))


def request(endpoint, frames, timeout_ms=5000):
    s = CTX.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        if not s.poll(timeout_ms):
            raise AssertionError("no reply")
        return s.recv_multipart()
    finally:
        s.close(0)


def enc(rid, **body):
    return pb.Request(version=1, request_id=rid, **body).SerializeToString()


def H(text):
    return bytes.fromhex(text)


def varint_len(data, at):
    n = 1
    while data[at + n - 1] & 0x80:
        n += 1
    return n


class TestWorkedExample(unittest.TestCase):
    """Section 13, on a broker where nothing was published before."""

    def test_bytes(self):
        b = _broker.Broker("--default-delay-ms", "0")
        sub = CTX.socket(zmq.SUB)
        try:
            sub.connect(b.pub)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            time.sleep(0.3)   # let the subscription reach the broker (else: see below)
            rep = request(b.ingest, [H("08 01 10 01 22 1b 08 01 12 17 0a 05 65 33 2f 34 32 12 06"
                                       " 43 6f 6d 6d 69 74 1a 02 01 02 28 64 50 01")])
            self.assertEqual(rep, [H("08 01 10 01 32 08 08 01 12 04 10 01 18 01")])
            live = sub.recv_multipart() if sub.poll(3000) else None
            frames = request(b.query, [H("08 01 10 02 2a 09 0a 05 65 33 2f 34 32 10 01")])
            self.assertEqual(len(frames), 2)
            batch = frames[1]
            if live is not None:
                # Subscriptions are asynchronous: a subscriber that came too
                # late misses the batch, which the fetch shows all the same.
                self.assertEqual(live, [H("65 33 2f 34 32 00"), batch])
            # Cut out timestamp_ms (field 8, "40 <varint>"): the broker's clock.
            at = batch.index(b"\x40", 19)
            ts_len = varint_len(batch, at + 1)
            self.assertEqual(batch[:at], H("08 01 12 05 65 33 2f 34 32 18 01 20 01 28 01 30 01 38 64"))
            self.assertEqual(batch[at + 1 + ts_len:],
                             H("50 01 60 01 5a 14 08 01 10 01 22 06 43 6f 6d 6d 69 74 2a 02 01 02"
                               " 38 64 60 01"))
            self.assertEqual(len(batch), 52)
            r = pb.Reply.FromString(frames[0])
            f = r.fetch
            self.assertEqual((r.version, r.request_id, r.error), (1, 2, 0))
            self.assertEqual((f.count, f.last_batch_id, f.more, f.retained_first_seq,
                              f.retained_first_batch_id, f.last_seq, f.last_batch_id_published),
                             (1, 1, False, 1, 1, 1, 1))
            self.assertNotEqual(f.epoch, 0)
            refused = request(b.ingest, [H("08 02 10 01 22 1b 08 01 12 17 0a 05 65 33 2f 34 32 12"
                                           " 06 43 6f 6d 6d 69 74 1a 02 01 02 28 64 50 01")])
            self.assertEqual(refused[0][:8], H("08 01 10 01 18 08 22 1c"))
        finally:
            sub.close(0)
            self.assertEqual(b.stop(), 0)
            b.cleanup()


class TestOutOfRetention(unittest.TestCase):
    def test_out_of_retention_carries_fetch_reply(self):
        # A small log and memory ring, so that the oldest batches go.
        b = _broker.Broker("--default-delay-ms", "0", "--retain-batches", "8",
                           "--set", "storage.segment_bytes=4096",
                           "--set", "storage.retain_bytes=8192")
        try:
            for i in range(600):
                request(b.ingest, [enc(1 + i, publish=pb.Publish(ack=pb.ACK_PUBLISHED, events=[
                    pb.Event(aggregate="oor/x", type="T", payload=b"p" * 100)]))])
            # The broker applies retention in the background: wait for it
            # (bounded only so that a broken broker cannot hang the suite).
            end = time.monotonic() + 60
            while True:
                frames = request(b.query, [enc(9, fetch=pb.Fetch(from_seq=1, max_batches=1))])
                r = pb.Reply.FromString(frames[0])
                if r.error or time.monotonic() > end:
                    break
                time.sleep(0.05)
            self.assertEqual(len(frames), 1)
            self.assertEqual(r.error, pb.ERR_OUT_OF_RETENTION)
            self.assertTrue(r.HasField("fetch"))
            f = r.fetch
            self.assertEqual(f.count, 0)
            self.assertGreater(f.retained_first_seq, 1)
            self.assertGreater(f.retained_first_batch_id, 1)
            self.assertEqual((f.last_seq, f.last_batch_id_published), (600, 600))
            self.assertNotEqual(f.epoch, 0)
            # From the horizon on, the fetch is served. (Retention may still
            # be deleting in the background: then the horizon moved up, and
            # the refusal says where to.)
            h = f.retained_first_seq
            while True:
                frames = request(b.query, [enc(10, fetch=pb.Fetch(from_seq=h, max_batches=1))])
                r = pb.Reply.FromString(frames[0])
                if r.error != pb.ERR_OUT_OF_RETENTION or time.monotonic() > end:
                    break
                self.assertGreater(r.fetch.retained_first_seq, h)
                h = r.fetch.retained_first_seq
            self.assertEqual(r.error, 0)
            self.assertGreaterEqual(pb.SnapshotBatch.FromString(frames[1]).last_seq, h)
        finally:
            self.assertEqual(b.stop(), 0)
            b.cleanup()


class TestDocumentedBehaviour(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # 12 one-event batches.
        cls.seqs = []
        for i in range(12):
            r = pb.Reply.FromString(request(B.ingest, [enc(100 + i, publish=pb.Publish(
                ack=pb.ACK_PUBLISHED,
                events=[pb.Event(aggregate=("doc/ab" if i % 2 else "doc/a"), type="T")]))])[0])
            cls.seqs.append(r.publish.results[0].seq)

    def test_hello_on_query_socket(self):
        q = pb.Reply.FromString(request(B.query, [enc(7, hello=pb.Hello(client="t"))])[0])
        i = pb.Reply.FromString(request(B.ingest, [enc(8, hello=pb.Hello(client="t"))])[0])
        self.assertEqual((q.error, q.request_id), (0, 7))
        self.assertEqual(q.hello.epoch, i.hello.epoch)
        self.assertNotEqual(q.hello.epoch, 0)
        self.assertGreaterEqual(q.hello.last_batch_id, 12)
        self.assertGreaterEqual(q.hello.last_seq, self.seqs[-1])

    def test_empty_request_is_invalid(self):
        for ep in (B.ingest, B.query):
            r = pb.Reply.FromString(request(ep, [b""])[0])
            self.assertEqual((r.version, r.request_id, r.error), (1, 0, pb.ERR_INVALID))

    def test_exact_and_paging(self):
        frames = request(B.query, [enc(11, fetch=pb.Fetch(prefix="doc/a", exact=True))])
        r = pb.Reply.FromString(frames[0])
        names = {pb.SnapshotBatch.FromString(x).aggregate for x in frames[1:]}
        self.assertEqual(names, {"doc/a"})
        self.assertEqual(r.fetch.count, len(frames) - 1)
        # Without exact the prefix also matches doc/ab.
        frames = request(B.query, [enc(12, fetch=pb.Fetch(prefix="doc/a"))])
        names = {pb.SnapshotBatch.FromString(x).aggregate for x in frames[1:]}
        self.assertEqual(names, {"doc/a", "doc/ab"})
        # One batch per page: last_batch_id is the cursor, more until the newest.
        after, ids = 0, []
        while True:
            frames = request(B.query, [enc(13, fetch=pb.Fetch(prefix="doc/", after_batch_id=after,
                                                              max_batches=1))])
            f = pb.Reply.FromString(frames[0]).fetch
            ids += [pb.SnapshotBatch.FromString(x).batch_id for x in frames[1:]]
            if not f.more:
                self.assertEqual(f.last_batch_id, f.last_batch_id_published)
                break
            after = f.last_batch_id
        self.assertEqual(ids, sorted(set(ids)))
        self.assertEqual(len(ids), 12)

    def test_two_frames_are_invalid(self):
        r = pb.Reply.FromString(request(B.ingest, [enc(14, hello=pb.Hello()), b"x"])[0])
        self.assertEqual((r.request_id, r.error), (0, pb.ERR_INVALID))

    def test_delimiter_is_echoed(self):
        frames = request(B.query, [b"", enc(15, hello=pb.Hello())])
        self.assertEqual(frames[0], b"")
        self.assertEqual(pb.Reply.FromString(frames[1]).request_id, 15)


if __name__ == "__main__":
    unittest.main()
