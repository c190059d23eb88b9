"""Aggregates spread over several brokers (docs/SCALING.md): shard_of gives
the same answers as the C library and the broker, and a broker refuses the
events of aggregates it does not own, with a typed per-event error."""

import unittest

import _broker

import snapbus

# The table of tests/unit/test_shard.c: every client and broker must agree.
COUNTS = (1, 2, 3, 4, 7, 16, 100, 1000)
VECTORS = {
    "": (0, 1, 1, 1, 1, 13, 90, 266),
    "a": (0, 1, 2, 2, 2, 12, 31, 163),
    "order/1": (0, 0, 2, 2, 4, 14, 61, 881),
    "order/2": (0, 1, 2, 2, 2, 2, 41, 661),
    "customer/42": (0, 1, 1, 1, 1, 13, 90, 579),
    "\u00e9": (0, 1, 2, 2, 5, 5, 19, 393),
    "a/very/long/aggregate/name/with/parts": (0, 1, 1, 3, 3, 14, 67, 631),
}


class TestShardOf(unittest.TestCase):
    def test_vectors(self):
        for name, want in VECTORS.items():
            self.assertEqual(tuple(snapbus.shard_of(name, n) for n in COUNTS), want, name)
            self.assertEqual(snapbus.shard_of(name.encode(), 7), want[4])

    def test_refuses_zero_shards(self):
        self.assertRaises(ValueError, snapbus.shard_of, "a", 0)


class TestShardedBroker(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.b = _broker.Broker("--set", "shard.count=3", "--set", "shard.index=1")

    @classmethod
    def tearDownClass(cls):
        rc = cls.b.stop()
        log = cls.b.log_text()
        cls.b.cleanup()
        if rc != 0:
            raise AssertionError("snapbusd exit status %r; log:\n%s" % (rc, log))

    def test_hello_names_the_shard(self):
        p = snapbus.Publisher(self.b.ingest)
        try:
            self.assertEqual((p.hello.shard_index, p.hello.shard_count), (1, 3))
        finally:
            p.close()

    def test_refuses_aggregates_of_other_shards(self):
        names = ["s/%d" % i for i in range(60)]
        mine = [n for n in names if snapbus.shard_of(n, 3) == 1]
        self.assertTrue(0 < len(mine) < len(names))
        p = snapbus.Publisher(self.b.ingest, linger_ms=1000)   # one request for all
        try:
            receipts = [(n, p.send(n, "T", b"x")) for n in names]
            p.flush()
            seqs = []
            for n, r in receipts:
                if n in mine:
                    seqs.append(r.result().seq)
                else:
                    with self.assertRaises(snapbus.WrongShardError) as cm:
                        r.result()
                    self.assertEqual(cm.exception.scope, "event")
                    self.assertEqual(cm.exception.code, 11)
            # Only the owned aggregates were sequenced, gap-free.
            self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(mine))))
        finally:
            p.close()


if __name__ == "__main__":
    unittest.main()
