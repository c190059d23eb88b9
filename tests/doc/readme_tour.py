#!/usr/bin/env python3
"""Runs the README's two-minute tour against a real broker and compares
what each command prints with what the README shows.

The tour's code blocks are marked with HTML comments, so this test reads
them rather than keeping a copy that could drift:

  <!-- tour:sub -->         a `snapbus sub` command, run in the background
  <!-- tour:pub -->         commands, each followed by its expected stdout
                            as `# ` lines
  <!-- tour:sub-output -->  what the subscriber prints next
  <!-- tour:broker -->      a snapbusd command line: must pass
                            --check-config

The broker runs with the settings of the README's run command (defaults)
but on free loopback ports and a temporary data directory; the client
commands get -e/-Q (and sub --ready-file) inserted after the subcommand,
and nothing else changes. What must vary from run to run (ts_ms) is
masked on both sides. Every wait is for a condition, with a generous
deadline. Exit 0: the tour is true.

usage: readme_tour.py --snapbusd PATH --snapbus PATH --readme README.md
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

DEADLINE_S = 120  # generous: the machine may be loaded


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def parse_tour(readme):
    text = open(readme, encoding="utf-8").read()
    start = text.find("## A two-minute tour")
    if start < 0:
        fail("README has no '## A two-minute tour' section")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else len(text)]
    blocks = []
    for m in re.finditer(r"<!-- tour:([a-z-]+) -->\s*\n```[a-z]*\n(.*?)```",
                         section, re.S):
        blocks.append((m.group(1), m.group(2)))
    kinds = [k for k, _ in blocks]
    for need in ("sub", "pub", "sub-output", "broker"):
        if need not in kinds:
            fail("the tour has no tour:%s block (found %s)" % (need, kinds))
    return blocks


def mask(line):
    return re.sub(r"ts_ms=\d+", "ts_ms=<ts>", line.rstrip())


def client_argv(cmdline, snapbus, extra):
    """The README's command with the built binary and extra options
    inserted after the subcommand."""
    argv = shlex.split(cmdline, comments=True)
    if not argv or argv[0] != "./build/snapbus":
        fail("not a ./build/snapbus command: %r" % cmdline)
    return [snapbus, argv[1]] + extra + argv[2:]


def wait_for(cond, what):
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    fail("timed out waiting for " + what)


def read_kv(path):
    try:
        with open(path) as f:
            kv = dict(l.strip().split("=", 1) for l in f if "=" in l)
    except FileNotFoundError:
        return None
    return kv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapbusd", required=True)
    ap.add_argument("--snapbus", required=True)
    ap.add_argument("--readme", required=True)
    a = ap.parse_args()
    blocks = parse_tour(a.readme)
    tmp = tempfile.mkdtemp(prefix="readme-tour-")
    ready = os.path.join(tmp, "broker.ready")
    broker = subprocess.Popen(
        [a.snapbusd, "--data-dir", os.path.join(tmp, "data"),
         "--ingest", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*",
         "--query", "tcp://127.0.0.1:*", "--ready-file", ready],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "broker.log"), "w"))
    sub = None
    checked = 0
    try:
        def broker_ready():
            if broker.poll() is not None:
                fail("the broker exited %d (see %s/broker.log)" % (broker.returncode, tmp))
            kv = read_kv(ready)
            return kv if kv and "pid" in kv else None
        ep = wait_for(broker_ready, "the broker's ready file")
        sub_out = os.path.join(tmp, "sub.out")
        sub_seen = 0  # lines of the subscriber's output already compared
        for kind, body in blocks:
            if kind == "sub":
                cmd = [l for l in body.splitlines() if l.strip()]
                if len(cmd) != 1 or sub is not None:
                    fail("one tour:sub block with one command expected")
                sub_ready = os.path.join(tmp, "sub.ready")
                argv = client_argv(cmd[0], a.snapbus,
                                   ["-e", ep["pub"], "-Q", ep["query"],
                                    "--ready-file", sub_ready])
                sub = subprocess.Popen(argv, stdout=open(sub_out, "w"),
                                       stderr=open(sub_out + ".err", "w"))
                wait_for(lambda: os.path.exists(sub_ready) or sub.poll() is not None,
                         "the subscriber's ready file")
                if sub.poll() is not None:
                    fail("sub exited %d: %s" % (sub.returncode, open(sub_out + ".err").read()))
                print("ok   sub: %s" % cmd[0])
            elif kind == "pub":
                cmd, want = None, []
                runs = []
                for line in body.splitlines():
                    if line.startswith("# "):
                        want.append(line[2:])
                    elif line.strip():
                        if cmd is not None:
                            runs.append((cmd, want))
                        cmd, want = line, []
                if cmd is not None:
                    runs.append((cmd, want))
                for cmd, want in runs:
                    argv = client_argv(cmd, a.snapbus, ["-e", ep["ingest"]])
                    r = subprocess.run(argv, capture_output=True, text=True,
                                       timeout=DEADLINE_S)
                    got = r.stdout.splitlines()
                    if r.returncode != 0 or [mask(l) for l in got] != [mask(l) for l in want]:
                        fail("%s\n  README shows: %r\n  it printed (exit %d): %r\n  stderr: %s"
                             % (cmd, want, r.returncode, got, r.stderr.strip()))
                    print("ok   %s" % cmd)
                    checked += 1
            elif kind == "sub-output":
                want = [l for l in body.splitlines() if l.strip()]
                n = sub_seen + len(want)

                def sub_lines():
                    if sub.poll() is not None:
                        fail("sub exited %d: %s" % (sub.returncode, open(sub_out + ".err").read()))
                    lines = open(sub_out).read().splitlines()
                    return lines if len(lines) >= n else None
                got = wait_for(sub_lines, "%d lines from sub" % n)[sub_seen:n]
                if [mask(l) for l in got] != [mask(l) for l in want]:
                    fail("the subscriber printed\n  %s\nthe README shows\n  %s"
                         % ("\n  ".join(got), "\n  ".join(want)))
                sub_seen = n
                print("ok   sub printed %d lines as shown" % len(want))
                checked += 1
            elif kind == "broker":
                for line in body.splitlines():
                    if not line.strip():
                        continue
                    argv = shlex.split(line, comments=True)
                    if argv[0] != "./build/snapbusd":
                        fail("not a ./build/snapbusd command: %r" % line)
                    argv = [a.snapbusd] + argv[1:] + ["--check-config"]
                    r = subprocess.run(argv, capture_output=True, text=True,
                                       cwd=tmp, timeout=DEADLINE_S)
                    if r.returncode != 0:
                        fail("%s --check-config exited %d: %s"
                             % (line, r.returncode, r.stderr.strip()))
                    print("ok   %s (--check-config)" % line)
                    checked += 1
        # Nothing more than the README shows.
        extra = open(sub_out).read().splitlines()[sub_seen:]
        if extra:
            fail("the subscriber printed more than the README shows: %r" % extra)
    finally:
        if sub is not None and sub.poll() is None:
            sub.terminate()
            sub.wait(timeout=DEADLINE_S)
        broker.terminate()
        rc = broker.wait(timeout=DEADLINE_S)
    if rc != 0:
        fail("the broker exited %d on SIGTERM" % rc)
    print("%d checks passed, 0 failed" % checked)


if __name__ == "__main__":
    main()
