"""The subscriber's gap logic alone, without a network: live batches are
fed by hand (in order, duplicated, missing) and fetches are answered by an
in-memory model of the broker's retained batches (PROTOCOL.md section 9)."""

import unittest

import _broker  # noqa: F401  (puts the package on sys.path)

from snapbus import pb
from snapbus.errors import error_for
from snapbus.model import SubscriberState
from snapbus.subscriber import _Cursor, _FetchResult, _Loss, _Tracker
from snapbus.model import Batch


class Model:
    """Published batches, a retention horizon, and Fetch as documented."""

    def __init__(self):
        self.batches = []
        self.seq = 0
        self.last = {}
        self.first_retained = 1      # batch id
        self.stale_first_id = False  # report an out-of-date retained_first_batch_id
        self.fetches = []

    def publish(self, agg, n=1):
        b = pb.SnapshotBatch(version=1, aggregate=agg, batch_id=len(self.batches) + 1,
                             prev_last_seq=self.last.get(agg, 0))
        for _ in range(n):
            self.seq += 1
            b.events.add(seq=self.seq, aggregate_seq=self.seq, type="T")
        b.first_seq, b.last_seq = b.events[0].seq, self.seq
        self.last[agg] = self.seq
        self.batches.append(b)
        return b

    def evict(self, upto_id):
        self.first_retained = upto_id + 1

    def fetch(self, f):
        self.fetches.append(dict(f))
        retained = [b for b in self.batches if b.batch_id >= self.first_retained]
        horizon = retained[0].first_seq if retained else self.seq + 1
        first_id = retained[0].batch_id if retained else 0
        fr = pb.FetchReply(retained_first_seq=horizon,
                           retained_first_batch_id=1 if self.stale_first_id else first_id,
                           last_seq=self.seq, last_batch_id_published=len(self.batches))
        after = f.get("after_batch_id", 0)
        if (after == 0 and f.get("from_seq", 0) and f["from_seq"] < horizon) or \
                (after and retained and after + 1 < retained[0].batch_id):
            return _FetchResult(fr, error_for(pb.ERR_OUT_OF_RETENTION), ())
        out = []
        fr.last_batch_id = after
        for b in retained:
            if b.batch_id <= after:
                continue
            if len(out) >= (f.get("max_batches") or 3):   # small pages, to exercise paging
                fr.more = True
                break
            fr.last_batch_id = b.batch_id
            p = f.get("prefix", "")
            ok = (b.aggregate == p) if f.get("exact") else b.aggregate.startswith(p)
            ok = ok and b.last_seq >= f.get("from_seq", 0)
            ok = ok and (not f.get("to_seq") or b.first_seq <= f["to_seq"])
            if ok:
                c = pb.SnapshotBatch()
                c.CopyFrom(b)
                if f.get("headers_only"):
                    del c.events[:]
                out.append(c)
        fr.count = len(out)
        return _FetchResult(fr, None, out)


def run(model, gen):
    try:
        f = next(gen)
        while True:
            f = gen.send(model.fetch(f))
    except StopIteration:
        pass


def delivered(tr):
    """(batch ids delivered, losses) drained from the tracker's output."""
    ids, losses = [], []
    while tr.out:
        x = tr.out.popleft()
        if isinstance(x, Batch):
            ids.append(x.batch_id)
        elif isinstance(x, _Loss):
            losses.append(x.losses)
    return ids, losses


def tracker(subs, cursor=0, headers_only=True):
    return _Tracker(subs, SubscriberState(cursor=cursor), headers_only)


class TestTopicMode(unittest.TestCase):
    def setUp(self):
        self.m = Model()
        self.tr = tracker([("e/", False)])

    def live(self, b):
        run(self.m, self.tr.on_live(b))

    def test_in_order_needs_no_fetch(self):
        for agg in ("e/1", "e/2", "e/1", "x/9", "e/2"):
            b = self.m.publish(agg)
            if agg.startswith("e/"):
                self.live(b)
        self.assertEqual(delivered(self.tr), ([1, 2, 3, 5], []))
        self.assertEqual(self.m.fetches, [])

    def test_duplicate_is_skipped(self):
        b1, b2 = self.m.publish("e/1"), self.m.publish("e/1")
        for b in (b1, b2, b2, b1):
            self.live(b)
        self.assertEqual(delivered(self.tr), ([1, 2], []))

    def test_missing_batches_are_filled_in_order(self):
        bs = [self.m.publish("e/%d" % (i % 2)) for i in range(10)]
        for i in (0, 1, 8):                  # 2..7 dropped
            self.live(bs[i])
        # e/0's chain shows its gap (batches 3, 5, 7), filled before 9;
        # e/1's missing batches show only with its next batch (or a sweep).
        self.assertEqual(delivered(self.tr), ([1, 2, 3, 5, 7, 9], []))
        self.assertTrue(all(f.get("exact") for f in self.m.fetches))
        # The rest arrive live later: already delivered ones are skipped.
        for b in bs[2:]:
            self.live(b)
        self.assertEqual(delivered(self.tr), ([4, 6, 8, 10], []))

    def test_new_topic_after_cursor(self):
        self.m.publish("e/1")                # before the subscriber started
        self.tr.cursor = 1
        b2, b3 = self.m.publish("e/1"), self.m.publish("e/1")
        self.live(b3)                        # b2 was dropped: fetched after the cursor
        self.assertEqual(delivered(self.tr), ([2, 3], []))

    def test_tail_loss_found_by_sweep(self):
        b1 = self.m.publish("e/1")
        self.live(b1)
        delivered(self.tr)
        self.m.publish("e/2")
        self.m.publish("e/1")                # both dropped, nothing after them
        run(self.m, self.tr.sweep())
        self.assertEqual(delivered(self.tr), ([2, 3], []))
        self.assertTrue(self.m.fetches[0].get("headers_only"))
        self.assertEqual(self.tr.cursor, 3)
        run(self.m, self.tr.sweep())         # nothing new
        self.assertEqual(delivered(self.tr), ([], []))

    def test_sweep_without_headers_only(self):
        tr = self.tr = tracker([("e/", False)], headers_only=False)
        self.live(self.m.publish("e/1"))
        self.m.publish("e/1")
        self.m.publish("e/2")
        run(self.m, tr.sweep())
        self.assertEqual(delivered(tr), ([1, 2, 3], []))

    def test_out_of_retention_is_reported_then_carries_on(self):
        self.live(self.m.publish("e/1"))
        for _ in range(5):
            self.m.publish("e/1")
        self.m.evict(4)                      # batches 2..4 are gone
        self.live(self.m.publish("e/1"))     # batch 7
        ids, losses = delivered(self.tr)
        self.assertEqual(ids, [1, 5, 6, 7])
        self.assertEqual(len(losses), 1)
        self.assertEqual(losses[0][0][0], "e/1")

    def test_out_of_retention_recovers_from_the_horizon_seq(self):
        # The refusal's retained_first_seq is enough to carry on, even if
        # its retained_first_batch_id were out of date.
        self.m.stale_first_id = True
        self.live(self.m.publish("e/1"))
        for _ in range(5):
            self.m.publish("e/1")
        self.m.evict(4)
        self.live(self.m.publish("e/1"))
        ids, losses = delivered(self.tr)
        self.assertEqual((ids, len(losses)), ([1, 5, 6, 7], 1))

    def test_floor_of_a_seq_resume(self):
        self.tr.floor = 2
        for _ in range(4):
            self.live(self.m.publish("e/1"))
        self.assertEqual(delivered(self.tr), ([3, 4], []))

    def test_catch_up_from_seq_over_two_prefixes(self):
        tr = self.tr = tracker([("a/", False), ("b/", False)])
        for i in range(10):
            self.m.publish("ab"[i % 2] + "/x")
        self.m.evict(2)                      # seqs 1, 2 are gone
        run(self.m, tr.sweep(from_seq=2))    # a resume from seq 1
        ids, losses = delivered(tr)
        self.assertEqual(sorted(ids), list(range(3, 11)))
        self.assertEqual(len(losses), 2)     # seq 2 may have been of either prefix
        self.assertEqual([f["from_seq"] for f in self.m.fetches if f["prefix"] == "b/"][0], 2)
        self.assertEqual(tr.cursor, 10)


class TestEverythingMode(unittest.TestCase):
    def setUp(self):
        self.m = Model()
        self.tr = tracker([("", False)])

    def test_batch_id_gap(self):
        bs = [self.m.publish("a/%d" % (i % 3)) for i in range(8)]
        for i in (0, 6, 7):
            run(self.m, self.tr.on_live(bs[i]))
        self.assertEqual(delivered(self.tr), (list(range(1, 9)), []))
        self.assertEqual(self.tr.cursor, 8)
        run(self.m, self.tr.on_live(bs[3]))  # late copy
        self.assertEqual(delivered(self.tr), ([], []))

    def test_tail(self):
        run(self.m, self.tr.on_live(self.m.publish("a")))
        delivered(self.tr)
        self.m.publish("b")
        self.m.publish("c")
        run(self.m, self.tr.sweep())
        self.assertEqual(delivered(self.tr), ([2, 3], []))

    def test_evicted(self):
        run(self.m, self.tr.on_live(self.m.publish("a")))
        for _ in range(5):
            self.m.publish("a")
        self.m.evict(3)
        run(self.m, self.tr.on_live(self.m.publish("a")))
        ids, losses = delivered(self.tr)
        self.assertEqual(ids, [1, 4, 5, 6, 7])
        self.assertEqual(len(losses), 1)

    def test_evicted_with_stale_first_id(self):
        self.m.stale_first_id = True
        self.test_evicted()

    def test_restart_reset(self):
        run(self.m, self.tr.on_live(self.m.publish("a")))
        self.tr.reset(RuntimeError("restart"))
        self.assertEqual((self.tr.cursor, self.tr.last), (0, {}))


if __name__ == "__main__":
    unittest.main()
