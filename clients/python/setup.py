"""Package build: the usual build_py, plus snapbus_pb2.py generated from
proto/snapbus.proto into the built package (snapbus/_gen.py). The
metadata is in pyproject.toml."""
import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py

_HERE = os.path.dirname(os.path.abspath(__file__))


def _gen_module():
    # Loaded by path: importing the package would need the module we are
    # about to generate.
    spec = importlib.util.spec_from_file_location(
        "snapbus_gen", os.path.join(_HERE, "snapbus", "_gen.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildWithProto(build_py):
    def run(self):
        super().run()
        gen = _gen_module()
        try:
            gen.generate(os.path.join(self.build_lib, "snapbus"))
        except gen.GenerateError as e:
            # A message, not a traceback: what is missing and what to do.
            raise SystemExit("error: snapbus: " + str(e))


setup(cmdclass={"build_py": BuildWithProto})
