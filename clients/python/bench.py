#!/usr/bin/python3
"""Throughput of the Python client on loopback, next to raw pyzmq.

    /usr/bin/python3 clients/python/bench.py [--snapbusd build/snapbusd] [-n 200000]

Starts a fresh snapbusd (default settings, a temporary data directory) and
measures, with the same payload size and 16 aggregates round-robin:

  raw        pyzmq PUSH -> PULL, one message per event, sender and
             receiver in two processes: the baseline for Python
  sequenced  Publisher, ACK_SEQUENCED, window 64, linger 0 (the default:
             a request goes out as soon as the window has room) and 5 ms
             (events wait up to 5 ms to share a request): time until
             every event's ack arrived
  none       Publisher, ACK_NONE -> broker -> Subscriber in another
             process: time until the subscriber had every event
  catch-up   Subscriber(from_seq=...) reading the retained events back
             over fetch

Each rate is events/s, with its ratio to the raw baseline. Events lost or
duplicated make the script exit 1.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "tests"))


def child_pull(endpoint, n):
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, 100000)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    print(json.dumps({"port": port}), flush=True)
    s.recv()
    t0 = time.perf_counter()
    for _ in range(n - 1):
        s.recv()
    print(json.dumps({"seconds": time.perf_counter() - t0, "count": n}), flush=True)


def child_sub(pub, query, n, prefix):
    import snapbus
    sub = snapbus.Subscriber(pub, query, prefixes=[prefix])
    print(json.dumps({"ready": True}), flush=True)
    seen = set()
    t0 = None
    while len(seen) < n:
        b = sub.recv(timeout=30)
        if b is None:
            break
        if t0 is None:
            t0 = time.perf_counter()
        for e in b.events:
            seen.add(e.seq)
    secs = time.perf_counter() - t0 if t0 else 0.0
    st = sub.stats
    print(json.dumps({"seconds": secs, "count": len(seen), "dups": st["events"] - len(seen),
                      "gaps": st["gaps"], "recovered": st["recovered"]}), flush=True)
    sub.close()


def run_child(*args):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__)] + list(args),
                            stdout=subprocess.PIPE, text=True)


def bench_raw(n, size):
    import zmq
    child = run_child("--child-pull", "x", str(n))
    port = json.loads(child.stdout.readline())["port"]
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 100000)
    s.connect("tcp://127.0.0.1:%d" % port)
    msg = b"x" * size
    for _ in range(n):
        s.send(msg)
    res = json.loads(child.stdout.readline())
    child.wait()
    s.close()
    ctx.term()
    return n / res["seconds"]


def bench_sequenced(broker, n, size, window, linger_ms, tag):
    import snapbus
    payload = b"x" * size
    p = snapbus.Publisher(broker.ingest, ack=snapbus.AckLevel.SEQUENCED, window=window,
                          linger_ms=linger_ms)
    aggs = ["bench/%s/%d" % (tag, i) for i in range(16)]
    t0 = time.perf_counter()
    rs = [p.send(aggs[i & 15], "T", payload) for i in range(n)]
    p.flush()
    secs = time.perf_counter() - t0
    seqs = {r.result().seq for r in rs}
    reqs = p.stats["requests"]
    p.close()
    return n / secs, len(seqs) == n, rs[0].result().seq, reqs


def bench_none_sub(broker, n, size):
    import snapbus
    child = run_child("--child-sub", broker.pub, broker.query, str(n), "bench/none/")
    json.loads(child.stdout.readline())
    payload = b"x" * size
    p = snapbus.Publisher(broker.ingest, ack=snapbus.AckLevel.NONE, linger_ms=5)
    aggs = ["bench/none/%d" % i for i in range(16)]
    t0 = time.perf_counter()
    for i in range(n):
        p.send(aggs[i & 15], "T", payload)
    p.flush()
    pub_secs = time.perf_counter() - t0
    p.close()
    res = json.loads(child.stdout.readline())
    child.wait()
    return n / pub_secs, n / res["seconds"], res


def bench_catchup(broker, n, first_seq):
    import snapbus
    sub = snapbus.Subscriber(broker.pub, broker.query, prefixes=["bench/seq5/"],
                             from_seq=first_seq - 1)
    t0 = time.perf_counter()
    seen = set()
    while len(seen) < n:
        b = sub.recv(timeout=10)
        if b is None:
            break
        seen.update(e.seq for e in b.events)
    secs = time.perf_counter() - t0
    sub.close()
    return len(seen) / secs, len(seen) == n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--snapbusd", default=os.environ.get("PYSNAPBUS_SNAPBUSD")
                    or os.path.join(HERE, "..", "..", "build", "snapbusd"))
    ap.add_argument("-n", "--events", type=int, default=200000)
    ap.add_argument("-s", "--size", type=int, default=100)
    ap.add_argument("-w", "--window", type=int, default=64)
    ap.add_argument("--child-pull", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-sub", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_pull:
        return child_pull(a.child_pull[0], int(a.child_pull[1]))
    if a.child_sub:
        pub, query, n, prefix = a.child_sub
        return child_sub(pub, query, int(n), prefix)

    os.environ["PYSNAPBUS_SNAPBUSD"] = os.path.abspath(a.snapbusd)
    import _broker
    _broker.SNAPBUSD = os.path.abspath(a.snapbusd)
    n, size = a.events, a.size
    print("snapbus Python client, %d events of %d bytes, 16 aggregates" % (n, size))
    raw = bench_raw(n, size)
    row = "%-44s %10.0f events/s  %5.2f x raw"
    print("%-44s %10.0f msgs/s" % ("raw pyzmq PUSH->PULL (1 message per event)", raw))
    broker = _broker.Broker()
    ok = True
    try:
        for linger in (0, 5):
            seq_rate, uniq, first, reqs = bench_sequenced(broker, n, size, a.window, linger,
                                                          "seq%d" % linger)
            ok &= uniq
            print(row % ("publish ACK_SEQUENCED, window %d, linger %d ms" % (a.window, linger),
                         seq_rate, seq_rate / raw) + "  %.1f events/request" % (n / reqs))
        pub_rate, sub_rate, res = bench_none_sub(broker, n, size)
        print(row % ("publish ACK_NONE (linger 5 ms)", pub_rate, pub_rate / raw))
        print(row % ("subscribe live (other process)", sub_rate, sub_rate / raw)
              + "  gaps filled %d, batches recovered %d" % (res["gaps"], res["recovered"]))
        ok &= res["count"] == n and res["dups"] == 0
        cu_rate, complete = bench_catchup(broker, n, first)
        ok &= complete
        print(row % ("subscribe catch-up (fetch from the broker)", cu_rate, cu_rate / raw))
    finally:
        rc = broker.stop()
        broker.cleanup()
    if rc != 0:
        print("snapbusd exit status %r" % rc)
        ok = False
    if not ok:
        print("LOST OR DUPLICATED EVENTS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
