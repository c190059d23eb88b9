"""Generates ``snapbus_pb2.py`` from ``proto/snapbus.proto`` with ``protoc``.

Run at build time, never at import: by the package build (``setup.py``,
so ``pip install ./clients/python`` installs the module inside the
package) and by the C project's build (``cmake --build`` writes
``<build>/python/snapbus_pb2.py`` for the tests). This file imports
nothing of the package, so the build can load it on its own.

The ``.proto`` is ``PYSNAPBUS_PROTO`` if set, else ``proto/snapbus.proto``
of the source tree this file sits in. ``protoc`` is ``PYSNAPBUS_PROTOC``
if set, else ``protoc`` on ``PATH`` (Debian: ``protobuf-compiler``).
"""

import hashlib
import os
import shutil
import subprocess
import tempfile

_HERE = os.path.dirname(os.path.realpath(__file__))
_TREE_PROTO = os.path.normpath(os.path.join(_HERE, "..", "..", "..", "proto", "snapbus.proto"))


class GenerateError(Exception):
    """The module could not be generated; the message says why and what to do."""


def proto_path():
    """Path of snapbus.proto, or None when it cannot be found."""
    p = os.environ.get("PYSNAPBUS_PROTO") or _TREE_PROTO
    return p if os.path.isfile(p) else None


def generate(out_dir, proto=None):
    """Runs protoc on the .proto into out_dir; returns the module's path.

    Written to a temporary directory first and renamed, so a concurrent
    reader never sees a half-written module."""
    proto = proto or proto_path()
    if proto is None:
        raise GenerateError("proto/snapbus.proto not found next to clients/python "
                            "(build from the snapbus source tree, or set PYSNAPBUS_PROTO)")
    protoc = os.environ.get("PYSNAPBUS_PROTOC") or shutil.which("protoc")
    if not protoc or not os.access(protoc, os.X_OK):
        raise GenerateError("protoc not found: it generates snapbus_pb2.py from "
                            "proto/snapbus.proto at build time. Install it "
                            "(Debian: apt-get install protobuf-compiler) or set "
                            "PYSNAPBUS_PROTOC to its path")
    with open(proto, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gen-", dir=out_dir)
    try:
        r = subprocess.run([protoc, "--proto_path=" + os.path.dirname(os.path.abspath(proto)),
                            "--python_out=" + tmp, os.path.abspath(proto)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise GenerateError("protoc failed on %s: %s"
                                % (proto, r.stdout.decode(errors="replace").strip()))
        gen = os.path.join(tmp, "snapbus_pb2.py")
        with open(gen, "a") as f:
            f.write("\n# generated from snapbus.proto sha256 %s\n" % digest)
        target = os.path.join(out_dir, "snapbus_pb2.py")
        os.replace(gen, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        print("usage: python3 clients/python/snapbus/_gen.py OUT_DIR", file=sys.stderr)
        sys.exit(2)
    try:
        print(generate(sys.argv[1]))
    except GenerateError as e:
        print("snapbus: " + str(e), file=sys.stderr)
        sys.exit(1)
