"""A short run of every `snapbus bench` mode (docs/PERFORMANCE.md).

No timing assertion: the machine may be slow. What must hold is that every
mode runs to the end against the real broker, that --json prints JSON with
the documented fields, and that nothing was lost (the PUB-only mode
aside, which counts the PUB's drops by design), duplicated or refused.

usage: smoke.py PATH-TO-snapbus
"""
import json
import subprocess
import sys

MODES = ["raw", "forwarder", "echo-pipelined", "echo", "fsync", "none",
         "none-lossy", "sequenced", "published", "durable", "lat-sequenced",
         "lat-published", "lat-durable", "lat-deliver"]
BROKER = {"none", "none-lossy", "sequenced", "published", "durable",
          "lat-sequenced", "lat-published", "lat-durable", "lat-deliver"}
LATENCY = {"echo", "fsync", "lat-sequenced", "lat-published", "lat-durable",
           "lat-deliver"}


def fail(why, out=""):
    sys.stderr.write("bench.smoke: %s\n%s\n" % (why, out))
    sys.exit(1)


def main():
    cli = sys.argv[1]
    cmd = [cli, "bench", "--json", "--modes", "all", "--events", "5000",
           "--lat-events", "200", "--sizes", "100,1000",
           "--aggregates", "16,1000", "--runs", "2"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=1200)
    sys.stderr.write(p.stderr)
    if p.returncode != 0:
        fail("%s exited %d" % (" ".join(cmd), p.returncode), p.stdout)
    try:
        doc = json.loads(p.stdout)
    except ValueError as e:
        fail("output is not JSON: %s" % e, p.stdout)
    rows = doc["results"]
    for key in ("events", "lat_events", "window", "aggregates", "runs"):
        if key not in doc:
            fail("no '%s' at the top" % key, p.stdout)
    seen = {r["mode"] for r in rows}
    for m in MODES:
        if m not in seen:
            fail("mode %s missing" % m, p.stdout)
    for r in rows:
        for key in ("mode", "size", "rate", "ratio", "lost", "ok"):
            if key not in r:
                fail("row without '%s': %r" % (key, r))
        m = r["mode"]
        if not r["ok"]:
            fail("%s did not complete: %r" % (m, r))
        if r["lossless"] and r["lost"] != 0:
            fail("%s lost %d events" % (m, r["lost"]), p.stdout)
        if r["dup"] != 0 or r["refused"] != 0:
            fail("%s: dup %d, refused %d" % (m, r["dup"], r["refused"]))
        if m == "none" and not r["lossless"]:
            fail("the fire-and-forget mode must use the lossless subscriber")
        if m in BROKER and "cpu_us_per_event" not in r:
            fail("%s has no broker CPU per event" % m)
        if m in LATENCY:
            for key in ("p50_us", "p99_us", "p999_us"):
                if key not in r:
                    fail("%s has no %s" % (m, key))
            if not r["p50_us"] <= r["p99_us"] <= r["p999_us"]:
                fail("%s: percentiles out of order: %r" % (m, r))
        elif "mb_s" not in r:
            fail("%s has no MB/s" % m)
        if m.startswith("lat-") and r.get("baseline") not in (
                "echo", "echo+fsync"):
            fail("%s has no echo baseline: %r" % (m, r))
    aggs = {r.get("aggregates") for r in rows if r["mode"] == "sequenced"}
    if aggs != {16, 1000}:
        fail("sequenced ran for aggregates %r, not 16 and 1000" % aggs)
    print("bench.smoke: %d rows, every mode, nothing lost" % len(rows))


main()
