"""Loads the protobuf module generated from proto/snapbus.proto.

The generated module is never committed: it is made by ``protoc
--python_out`` from the ``.proto`` file, which is the only source of the
wire format. Where it comes from, in this order:

1. ``PYSNAPBUS_PB2_DIR`` set: that directory holds (or receives)
   ``snapbus_pb2.py``, generated from the ``.proto`` when missing or stale.
   The tests and ctest point it at the build tree.
2. Otherwise the generated module is cached under
   ``$XDG_CACHE_HOME/snapbus-python/<hash of the .proto>/`` (default
   ``~/.cache``), so a changed ``.proto`` always gets a fresh module.
3. No ``.proto`` found (the package was copied somewhere alone): an
   importable ``snapbus_pb2`` module on ``sys.path`` is used, e.g. one made
   with ``python3 -m snapbus gen DIR``.

The ``.proto`` is ``PYSNAPBUS_PROTO`` if set, else ``proto/snapbus.proto``
of the source tree this package sits in (``clients/python/snapbus``).
``protoc`` is ``PYSNAPBUS_PROTOC`` if set, else ``protoc`` on ``PATH``
(Debian: ``protobuf-compiler``).

Environment variables deliberately do not start with ``SNAPBUS_``: the
broker refuses ``SNAPBUS_*`` variables that are not its own settings.
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

_HERE = os.path.dirname(os.path.realpath(__file__))
_TREE_PROTO = os.path.normpath(os.path.join(_HERE, "..", "..", "..", "proto", "snapbus.proto"))


def proto_path():
    """Path of snapbus.proto, or None when it cannot be found."""
    p = os.environ.get("PYSNAPBUS_PROTO") or _TREE_PROTO
    return p if os.path.isfile(p) else None


def generate(out_dir, proto=None):
    """Runs protoc on the .proto into out_dir; returns the module's path.

    Written to a temporary directory first and renamed, so concurrent
    importers never see a half-written module."""
    proto = proto or proto_path()
    if proto is None:
        raise ImportError("snapbus: proto/snapbus.proto not found; set PYSNAPBUS_PROTO")
    protoc = os.environ.get("PYSNAPBUS_PROTOC") or shutil.which("protoc")
    if not protoc:
        raise ImportError("snapbus: protoc not found (Debian package protobuf-compiler); "
                          "it generates snapbus_pb2.py from proto/snapbus.proto")
    with open(proto, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gen-", dir=out_dir)
    try:
        r = subprocess.run([protoc, "--proto_path=" + os.path.dirname(os.path.abspath(proto)),
                            "--python_out=" + tmp, os.path.abspath(proto)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise ImportError("snapbus: protoc failed: " + r.stdout.decode(errors="replace"))
        gen = os.path.join(tmp, "snapbus_pb2.py")
        with open(gen, "a") as f:
            f.write("\n# generated from snapbus.proto sha256 %s\n" % digest)
        target = os.path.join(out_dir, "snapbus_pb2.py")
        os.replace(gen, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _fresh(path, digest):
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 200))
            return digest.encode() in f.read()
    except OSError:
        return False


def _load():
    proto = proto_path()
    if proto is None:
        try:
            import snapbus_pb2  # type: ignore  # pre-generated, on sys.path
            return snapbus_pb2
        except ImportError:
            raise ImportError("snapbus: neither proto/snapbus.proto (set PYSNAPBUS_PROTO) "
                              "nor a generated snapbus_pb2 module was found") from None
    with open(proto, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    out = os.environ.get("PYSNAPBUS_PB2_DIR")
    if not out:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        out = os.path.join(cache, "snapbus-python", digest[:16])
    path = os.path.join(out, "snapbus_pb2.py")
    if not _fresh(path, digest):
        generate(out, proto)
    spec = importlib.util.spec_from_file_location("snapbus._snapbus_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


pb = _load()

# Fields added after protocol version 1 was first written; a broker or a
# .proto without them still works (the client just does not use them).
FETCH_HAS_HEADERS_ONLY = "headers_only" in pb.Fetch.DESCRIPTOR.fields_by_name
FETCH_HAS_EXACT = "exact" in pb.Fetch.DESCRIPTOR.fields_by_name
