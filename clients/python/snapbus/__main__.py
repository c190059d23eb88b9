"""python3 -m snapbus gen DIR   writes snapbus_pb2.py (from proto/snapbus.proto) into DIR."""
import sys


def main(argv):
    if len(argv) == 2 and argv[0] == "gen":
        from ._pb import generate
        print(generate(argv[1]))
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
