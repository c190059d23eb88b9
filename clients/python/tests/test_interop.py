"""The Python client and the C command-line tool (build/snapbus) on the same
broker: Python publishes and `snapbus sub` receives, `snapbus pub`
publishes and the Python subscriber receives."""

import json
import os
import subprocess
import tempfile
import threading
import time
import unittest

import _broker

import snapbus

B = None


def setUpModule():
    global B
    if not os.access(_broker.CLI, os.X_OK):
        raise RuntimeError("snapbus CLI not found at %s (set PYSNAPBUS_CLI)" % _broker.CLI)
    B = _broker.Broker("--default-delay-ms", "0")


def tearDownModule():
    rc = B.stop()
    log = B.log_text()
    B.cleanup()
    if rc != 0:
        raise AssertionError("snapbusd exit status %r; log:\n%s" % (rc, log))


class _Reader(threading.Thread):
    """Collects a child's stdout lines."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []
        self.start()

    def run(self):
        for line in self.proc.stdout:
            self.lines.append(line)


class TestPythonToC(unittest.TestCase):
    D = 50

    def test_python_publishes_c_subscribes(self):
        """`snapbus sub --count D --json` with gap fill (-Q) on a fresh
        prefix, then D one-event batches from Python, published once it
        has written its ready file: it prints every one, in order."""
        prefix = "py2c/"
        with tempfile.TemporaryDirectory() as tmp:
            ready = os.path.join(tmp, "ready")
            proc = subprocess.Popen([_broker.CLI, "sub", "-e", B.pub, "-Q", B.query,
                                     "-p", prefix, "--json", "--count", str(self.D),
                                     "--timeout-ms", "60000", "--ready-file", ready],
                                    stdout=subprocess.PIPE, env=_broker.clean_env())
            reader = _Reader(proc)
            end = time.monotonic() + 60
            while not os.path.exists(ready) and proc.poll() is None \
                    and time.monotonic() < end:
                time.sleep(0.01)
            self.assertTrue(os.path.exists(ready), "snapbus sub never became ready")
            items = [(prefix + "agg%d" % (i % 3), "Type%d" % (i % 2), b"payload-%d" % i,
                      "id-%d" % i, i * 10) for i in range(self.D)]
            with snapbus.Publisher(B.ingest, batch_events=1, producer_id="py") as p:
                rs = [p.send(a, t, pl, event_id=eid, source_pos=sp)
                      for a, t, pl, eid, sp in items]
                p.flush()
                seqs = [r.result().seq for r in rs]
            proc.wait(timeout=120)
            reader.join(60)
            proc.stdout.close()
        self.assertEqual(proc.returncode, 0)
        batches = [json.loads(l) for l in reader.lines]
        self.assertEqual(len(batches), self.D)
        for (agg, typ, pl, eid, sp), seq, b in zip(items, seqs, batches):
            self.assertEqual(b["aggregate"], agg)
            self.assertEqual((b["first_seq"], b["last_seq"]), (seq, seq))
            (e,) = b["events"]
            self.assertEqual((e["seq"], e["type"], e["payload"], e["event_id"], e["source_pos"]),
                             (seq, typ, pl.decode(), eid, sp))


class TestCToPython(unittest.TestCase):
    def test_c_publishes_python_subscribes(self):
        lines = ["line %d" % i for i in range(200)] + ["h\u00e9llo"]
        with snapbus.Subscriber(B.pub, B.query, exact=["c2py"]) as sub:
            r = subprocess.run([_broker.CLI, "pub", "-e", B.ingest, "-g", "c2py", "-t", "FromC",
                                "-a", "sequenced"], input="\n".join(lines).encode() + b"\n",
                               stdout=subprocess.PIPE, env=_broker.clean_env(), timeout=60)
            self.assertEqual(r.returncode, 0)
            acked = [int(l.split()[0].split("=")[1]) for l in r.stdout.decode().splitlines()]
            self.assertEqual(len(acked), len(lines))
            evs = []
            end = time.monotonic() + 30
            while len(evs) < len(lines) and time.monotonic() < end:
                b = sub.recv(timeout=0.5)
                if b is not None:
                    self.assertEqual(b.aggregate, "c2py")
                    evs.extend(b.events)
            self.assertIsNone(sub.recv(timeout=0.6))
        self.assertEqual([e.seq for e in evs], acked)
        self.assertEqual([e.payload.decode() for e in evs], lines)
        self.assertEqual({e.type for e in evs}, {"FromC"})
        self.assertEqual([e.aggregate_seq for e in evs], list(range(1, len(lines) + 1)))


if __name__ == "__main__":
    unittest.main()
