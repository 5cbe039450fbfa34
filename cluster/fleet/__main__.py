"""`python -m cluster.fleet serve|status|...`: the fleet commands with a fast start."""

import argparse
import sys

from cluster.fleet.cli import register
from pipeline.errors import ReflexarcError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.fleet")
    sub = parser.add_subparsers(dest="cmd", required=True)
    register(sub)
    args = parser.parse_args(["fleet", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.func(args)
    except ReflexarcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
