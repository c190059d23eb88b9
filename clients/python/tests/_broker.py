"""Starts the real snapbusd on loopback for the tests, like
tests/integration/harness.c: free ports, a ready file, a data directory,
stopped with SIGTERM by PID and expected to exit 0.

Environment (set by ctest; defaults for a manual run from the source tree):
  PYSNAPBUS_SNAPBUSD  the broker binary   (default: build/snapbusd)
  PYSNAPBUS_CLI       the snapbus CLI     (default: build/snapbus)
  PYSNAPBUS_PB2_DIR   where the build put snapbus_pb2.py (default: build/python)
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..")))

# The generated protobuf module: the build tree's (cmake --build makes it).
os.environ.setdefault("PYSNAPBUS_PB2_DIR", os.path.join(SRC, "build", "python"))
SNAPBUSD = os.environ.get("PYSNAPBUS_SNAPBUSD") or os.path.join(SRC, "build", "snapbusd")
CLI = os.environ.get("PYSNAPBUS_CLI") or os.path.join(SRC, "build", "snapbus")


def clean_env():
    """The environment without SNAPBUS_* (snapbusd refuses unknown ones)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SNAPBUS_")}


class Broker:
    def __init__(self, *extra, endpoints=None, data_dir=None):
        """endpoints: (ingest, pub, query) to bind, default free ports;
        data_dir: the broker's data directory, default a new one."""
        if not os.access(SNAPBUSD, os.X_OK):
            raise RuntimeError("snapbusd not found at %s (set PYSNAPBUS_SNAPBUSD)" % SNAPBUSD)
        self.dir = tempfile.mkdtemp(prefix="sbpy.")
        self.ready = os.path.join(self.dir, "ready")
        self.log = os.path.join(self.dir, "broker.log")
        ing, pub, qry = endpoints or ("tcp://127.0.0.1:*",) * 3
        argv = [SNAPBUSD, "--ingest", ing, "--pub", pub,
                "--query", qry, "--ready-file", self.ready,
                "--data-dir", data_dir or os.path.join(self.dir, "data")] + list(extra)
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=logf,
                                         env=clean_env())
        self.ingest = self.pub = self.query = None
        # Bounded only so that a broken build cannot hang the suite.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._read_ready():
                return
            if self.proc.poll() is not None:
                raise RuntimeError("snapbusd exited at start (%s): %s"
                                   % (self.proc.returncode, self.log_text()))
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("snapbusd did not write its ready file")

    def _read_ready(self):
        try:
            with open(self.ready) as f:
                kv = dict(l.strip().split("=", 1) for l in f if "=" in l)
        except OSError:
            return False
        if not all(k in kv for k in ("ingest", "pub", "query")):
            return False
        self.ingest, self.pub, self.query = kv["ingest"], kv["pub"], kv["query"]
        self.metrics = kv.get("metrics")
        return True

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout=60):
        """SIGTERM by PID; returns the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
