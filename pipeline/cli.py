"""The `reflexarc` command: a thin layer over the library (every command is one call).

Users see one sentence per error; `--debug` shows the traceback. Exit codes: 0 ok,
1 a run failed, 2 a config is invalid.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

from pipeline.errors import ConfigError, DataError, ReflexarcError
from pipeline.run import EXECUTORS

log = logging.getLogger("reflexarc")


def _graph(args):
    from pipeline.graph import Graph

    return Graph.from_yaml(args.config, overrides=args.set or [])


def cmd_run(args) -> int:
    from rich.console import Console

    from pipeline.metrics import table
    from pipeline.recording_cli import RunExtras
    from pipeline.run import run

    graph = _graph(args)
    extras = RunExtras(graph, record=args.record, streams=args.streams.split(",") if args.streams else None,
                       strict=args.strict, foxglove=args.foxglove)
    configured = graph.config.get("executor") or "local"
    if isinstance(configured, dict):
        configured = configured.get("kind", "local")
    executor = args.executor or configured
    console = Console(stderr=True)
    live = None
    monitor = None
    if console.is_terminal and not args.quiet:
        from rich.live import Live

        live = Live(console=console, transient=True, refresh_per_second=4)
        live.start()

        def monitor(snaps):
            live.update(table(snaps, title=f"{graph.name} ({executor}) running"))

    stop = threading.Event()
    options = {}
    if executor.startswith("ray") and args.fuse:
        options["fuse"] = args.fuse
    try:
        with extras:
            for note in extras.notes:
                print(note, file=sys.stderr)
            result = run(graph, executor, monitor=monitor, stop=stop, **options)
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        if live is not None:
            live.stop()
    if not args.quiet:
        Console(width=max(120, Console().width)).print(table(result.metrics, title=f"{graph.name} ({executor}) in {result.wall_s:.2f} s"))
        misses = sum(m["budget_misses"] for m in result.metrics)
        drops = sum(m["drops_batches"] for m in result.metrics)
        if misses or drops:
            Console().print(f"latency budget misses: {misses}, dropped batches: {drops}")
    for line in extras.after(result):  # raises under --strict
        print(f"warning: {line}; --strict makes this an error", file=sys.stderr)
    if extras.viewer is not None:
        print(extras.viewer.summary_line(result.results), file=sys.stderr)
    if args.summary:
        result.write(args.summary)
    return 0


def cmd_validate(args) -> int:
    graph = _graph(args)
    print(f"ok: '{graph.name}' has {len(graph.nodes)} nodes and {len(graph.edges())} edges")
    for e in graph.edges():
        schema = graph.schemas[(e.src, e.src_port)]
        cols = ", ".join(f"{f.name}:{f.type}" for f in schema)
        print(f"  {e.stream} -> {e.dst}.{e.dst_port} [{e.policy}, {e.capacity}] ({cols})")
    return 0


def cmd_ops(args) -> int:
    from pipeline.operator import describe, registry

    ops = [describe(cls) for cls in registry().values()]
    if args.json:
        print(json.dumps(ops, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{len(ops)} operators")
    for col in ("name", "inputs", "outputs", "params (defaults)", "what it is for"):
        t.add_column(col)
    for op in ops:
        props = op["params"].get("properties", {})
        params = ", ".join(
            f"{k}={v.get('default', 'REQUIRED')!r}" if "default" in v or k in op["params"].get("required", []) else k
            for k, v in props.items()
        )
        io = lambda d: ", ".join(f"{p}:{k}" for p, k in d.items()) or "-"  # noqa: E731
        t.add_row(op["name"], io(op["inputs"]), io(op["outputs"]), params, op["doc"])
    Console().print(t)
    return 0


def cmd_inspect(args) -> int:
    path = Path(args.path)
    if not path.exists():
        raise DataError(f"'{path}' does not exist")
    report = None
    if path.is_dir() or path.suffix in (".arrow", ".arrows", ".ipc"):
        from pipeline import recording

        report = recording.inspect_recording(path)
        print(json.dumps(report, indent=2, default=str))
        for why in report["problems"]:  # exit 1: failed, recovered (killed) or damaged
            print(f"not a complete recording: {why}", file=sys.stderr)
        return 0 if report["ok"] else 1
    else:
        for ep in entry_points(group="reflexarc.inspectors"):
            try:
                fn = ep.load()
            except ModuleNotFoundError:
                continue
            report = fn(path)
            if report is not None:
                break
    if report is None:
        raise DataError(f"'{path}' is not a recording or an event file that reflexarc can read")
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_eval(args) -> int:
    import importlib

    from pipeline.graph import apply_overrides, read_yaml

    path = Path(args.config)
    config = read_yaml(path)
    spec = (config or {}).get("eval")
    if not isinstance(spec, dict) or "runner" not in spec:
        raise ConfigError("has no 'eval: {runner: module:function}' section, so it has nothing to evaluate", str(path))
    if args.set:
        problems = []
        apply_overrides(config, args.set, problems)
        if problems:
            raise ConfigError(problems, str(path))
    module, _, func = str(spec["runner"]).partition(":")
    try:
        runner = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"eval.runner '{spec['runner']}' cannot be loaded: {exc}", str(path)) from None
    out = Path(args.out or Path("out") / "eval" / path.stem)
    out.mkdir(parents=True, exist_ok=True)
    report = runner(config_path=path, config=config, out_dir=out, quick=args.quick)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"report written to {out / 'report.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reflexarc", description="Neuromorphic sensing-to-action pipelines.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a pipeline config")
    p.add_argument("config")
    p.add_argument("--executor", choices=EXECUTORS)
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE")
    p.add_argument("--summary", metavar="JSON", help="write metrics and results here")
    p.add_argument("--record", metavar="DIR", help="record streams into this folder")
    p.add_argument("--streams", help="comma-separated node.port streams to record (default: all)")
    p.add_argument("--fuse", choices=["none", "chains"], help="ray: fuse linear chains into one actor")
    p.add_argument("--strict", action="store_true", help="a skipped bad packet is an error, not a warning")
    p.add_argument("--foxglove", metavar="HOST:PORT", help="serve the running streams to Foxglove/Lichtblick "
                   "over the Foxglove WebSocket protocol (e.g. 127.0.0.1:8765)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a config; exit 2 listing every problem")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ops", help="list every registered operator")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("inspect", help="describe a recording or a sensor file")
    p.add_argument("path")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("eval", help="run the evaluation a config declares")
    p.add_argument("config")
    p.add_argument("--out", help="folder for the report and plots")
    p.add_argument("--quick", action="store_true", help="a shorter evaluation")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_eval)

    try:
        from pipeline import recording_cli

        recording_cli.register(sub)
    except ImportError:
        pass
    for ep in entry_points(group="reflexarc.commands"):
        try:
            ep.load()(sub)
        except ModuleNotFoundError as exc:
            log.debug("command plug-in %s not present: %s", ep.name, exc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except ReflexarcError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unexpected library failure
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
