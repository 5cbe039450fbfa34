"""The `reflexarc` command: a thin layer over the library (every command is one call).

Users see one sentence per error; `--debug` shows the traceback, `--verbose` Ray's own
log lines. Exit codes: 0 ok, 1 a run failed, 2 a config is invalid.

Start-up is kept light (`reflexarc --help` must not wait for torch, Ray or Numba): heavy
packages are imported inside the command that needs them, and a plug-in command's module
is imported only when that command runs.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
import os
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

from pipeline.errors import ConfigError, DataError, ReflexarcError
from pipeline.run import EXECUTORS

log = logging.getLogger("reflexarc")


# files that `reflexarc inspect` describes (sensor recordings, our recordings)
_DATA_SUFFIXES = {".aedat4", ".aedat", ".raw", ".dat", ".evt", ".arrow", ".arrows", ".mcap", ".edf", ".bdf",
                  ".tif", ".tiff", ".h5", ".hdf5", ".npy", ".npz"}


def _file_kind(path) -> tuple[str, object] | None:
    """(suffix, loader) for a file that is not YAML but one a `reflexarc.file_kinds` entry point
    loads (e.g. a `.nir` model); ConfigError naming `inspect` for data files and folders."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"is a folder, not a config: describe a recording with `reflexarc inspect {p}`", str(p))
    suffix = p.suffix.lower()
    for ep in entry_points(group="reflexarc.file_kinds", name=suffix.lstrip(".")):
        return suffix, ep.load()
    if suffix in _DATA_SUFFIXES:
        raise ConfigError(f"is a data file, not a config: describe it with `reflexarc inspect {p}`", str(p))
    return None


def _config_kind(path) -> tuple[str, object] | None:
    """(kind, checker) for a config that is not a pipeline, from the `reflexarc.config_kinds`
    entry points: a file without `nodes:` whose top-level key names a kind (e.g. `evolve:`)."""
    from pipeline.graph import read_yaml

    if _file_kind(path) is not None:
        return None
    data = read_yaml(path)
    if not isinstance(data, dict) or "nodes" in data:
        return None
    for ep in entry_points(group="reflexarc.config_kinds"):
        if ep.name in data:
            return ep.name, ep.load()
    return None


def _graph(args):
    from pipeline.graph import Graph

    if _file_kind(args.config) is not None:
        raise ConfigError(f"is not a pipeline config (`reflexarc validate {args.config}` checks it)", str(args.config))
    kind = _config_kind(args.config)
    if kind is not None:
        raise ConfigError(f"is an `{kind[0]}:` config, not a pipeline: run it with "
                          f"`reflexarc {kind[0]} {args.config}` (`reflexarc validate` checks it)", str(args.config))
    return Graph.from_yaml(args.config, overrides=args.set or [])


def cmd_run(args) -> int:
    from rich.console import Console

    from pipeline.metrics import console as table_console
    from pipeline.metrics import table
    from pipeline.recording_cli import RunExtras
    from pipeline.run import run

    graph = _graph(args)
    extras = RunExtras(graph, record=args.record, streams=args.streams.split(",") if args.streams else None,
                       strict=args.strict, foxglove=args.foxglove)
    from pipeline.run import configured_executor

    executor = args.executor or configured_executor(graph)[0]
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
    if args.address:
        options["address"] = args.address
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
        table_console().print(table(result.metrics, title=f"{graph.name} ({executor}) in {result.wall_s:.2f} s"))
        misses = sum(m["budget_misses"] for m in result.metrics)
        drops = sum(m["drops_batches"] for m in result.metrics)
        if misses or drops:
            Console().print(f"latency budget misses: {misses}, dropped batches: {drops}")
        for line in result.recovery.get("recovered", ()):  # what the runtime recovered from, one line each
            print(f"recovered: {line}", file=sys.stderr)
    for line in extras.after(result):  # raises under --strict
        print(f"warning: {line}; --strict makes this an error", file=sys.stderr)
    if extras.viewer is not None:
        print(extras.viewer.summary_line(result.results), file=sys.stderr)
    if args.summary:
        result.write(args.summary)
    return 0


def cmd_validate(args) -> int:
    file_kind = _file_kind(args.config)
    if file_kind is not None:  # e.g. a NIR model: loaded the way a run would load it
        loaded = file_kind[1](args.config)
        facts = ", ".join(f"{k} {getattr(loaded, k)}" for k in ("input_shape", "output_shape") if hasattr(loaded, k))
        print(f"ok: '{args.config}' loads as a {type(loaded).__name__}" + (f" ({facts})" if facts else ""))
        return 0
    kind = _config_kind(args.config)
    if kind is not None:  # e.g. an evolution config: its own command's reader checks it
        name, check = kind
        check(args.config, list(args.set or []))
        print(f"ok: '{args.config}' is a valid `{name}:` config; run it with `reflexarc {name} {args.config}`")
        return 0
    graph = _graph(args)
    placements = _check_placements(graph, args.address) if args.address else []
    print(f"ok: '{graph.name}' has {len(graph.nodes)} nodes and {len(graph.edges())} edges")
    for line in placements:
        print(f"  {line}")
    for e in graph.edges():
        schema = graph.schemas[(e.src, e.src_port)]
        cols = ", ".join(f"{f.name}:{f.type}" for f in schema)
        print(f"  {e.stream} -> {e.dst}.{e.dst_port} [{e.policy}, {e.capacity}] ({cols})")
    return 0


def _check_placements(graph, address: str) -> list[str]:
    """Each stage's `place:` against the live nodes of the cluster at `address` (ClusterError if unmet)."""
    from pipeline.executors.actors import check_placements, plan_groups
    from pipeline.executors.session import ray_session

    with ray_session(address, config=graph.config):
        import ray

        return check_placements(graph, plan_groups(graph, None), ray.get_runtime_context().get_node_id())


def cmd_ops(args) -> int:
    from pipeline.operator import describe, registry

    ops = [describe(cls) for cls in registry().values()]
    if args.json:
        print(json.dumps(ops, indent=2, default=str))
        return 0
    from rich.table import Table

    from pipeline.metrics import console

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
    console().print(t)
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


def _plugin_commands(ep) -> dict[str, str] | None:
    """command -> help of the sub-commands plug-in `ep` registers, read from its source.

    Importing a plug-in can import torch or Numba (seconds), and `reflexarc --help` needs
    only its names and one line each. Read from the `subparsers.add_parser("name", help=...)`
    calls of its register function without running anything; None when that cannot be told,
    and the plug-in is then imported as before.
    """
    module, _, func = ep.value.partition(":")
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level package is found, not run
        base = Path(spec.submodule_search_locations[0], *parts[1:])
        tree = ast.parse((base / "__init__.py" if base.is_dir() else base.with_suffix(".py")).read_text())
    except (ImportError, AttributeError, TypeError, OSError, SyntaxError, ValueError):
        return None
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func.strip()), None)
    if fn is None or not fn.args.args:
        return None
    subparsers = fn.args.args[0].arg
    found = {}
    for call in ast.walk(fn):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "add_parser"
                and isinstance(call.func.value, ast.Name) and call.func.value.id == subparsers):
            if not (call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
                return None
            help_ = next((k.value.value for k in call.keywords if k.arg == "help" and isinstance(k.value, ast.Constant)), "")
            found[call.args[0].value] = str(help_)
    return found or None


def _command_word(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; plug-in commands other than the one `argv` names are listed, not imported."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="reflexarc", description="Neuromorphic sensing-to-action pipelines.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own log lines and our info messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a pipeline config")
    p.add_argument("config")
    p.add_argument("--executor", choices=EXECUTORS)
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE")
    p.add_argument("--summary", metavar="JSON", help="write metrics and results here")
    p.add_argument("--record", metavar="DIR", help="record streams into this folder")
    p.add_argument("--streams", help="comma-separated node.port streams to record (default: all)")
    p.add_argument("--fuse", choices=["none", "chains"], help="ray: fuse linear chains into one actor")
    p.add_argument("--address", metavar="HOST:PORT", help="ray executors: join this running Ray cluster "
                   "('auto' finds a local one; default: the config's ray.address, RAY_ADDRESS, else start one)")
    p.add_argument("--strict", action="store_true", help="a skipped bad packet is an error, not a warning")
    p.add_argument("--foxglove", metavar="HOST:PORT", help="serve the running streams to Foxglove/Lichtblick "
                   "over the Foxglove WebSocket protocol (e.g. 127.0.0.1:8765)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a config; exit 2 listing every problem")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="NODE.PARAM=VALUE")
    p.add_argument("--address", metavar="HOST:PORT", help="also check every `place:` against this Ray cluster's live nodes")
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
    wanted = _command_word(argv)
    for ep in entry_points(group="reflexarc.commands"):
        listed = _plugin_commands(ep)
        if listed is not None and wanted not in listed:
            for name, help_ in listed.items():  # named in --help; imported only when it runs
                sub.add_parser(name, help=help_, add_help=False)
            continue
        try:
            ep.load()(sub)
        except ModuleNotFoundError as exc:
            log.debug("command plug-in %s not present: %s", ep.name, exc)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING)
    if not args.verbose:  # Ray reads it when first imported, in this process and its workers
        os.environ.setdefault("RAY_LOGGER_LEVEL", "error")
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
