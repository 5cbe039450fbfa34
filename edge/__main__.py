"""`python -m edge run|keys ...`: the edge commands without loading every CLI plug-in (fast start)."""

import argparse
import sys

from edge.cli import register
from pipeline.errors import ReflexarcError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge")
    sub = parser.add_subparsers(dest="cmd", required=True)
    register(sub)
    args = parser.parse_args(["edge", *(argv if argv is not None else sys.argv[1:])]
                             if (argv or sys.argv[1:])[:1] != ["keys"] else (argv or sys.argv[1:]))
    try:
        return args.func(args)
    except ReflexarcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
