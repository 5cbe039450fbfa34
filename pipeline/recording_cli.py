"""`reflexarc replay`, `reflexarc export` and `reflexarc import`: thin commands over replay.py.

Each command is one library call (`pipeline.replay.replay`, `pipeline.recording.export_*`,
`pipeline.recording.import_file`) plus printing, so notebooks and tests take the same path.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml
from rich.console import Console

from pipeline.errors import ConfigError, DataError, Problem
from pipeline.run import EXECUTORS

STRICT_HELP = "a skipped bad packet (or a damaged recording) is an error, not a warning"


def register(subparsers) -> None:
    """Add the replay, export and import sub-commands to the `reflexarc` parser."""
    p = subparsers.add_parser("replay", help="play a recording back, through a pipeline config")
    p.add_argument("recording", metavar="DIR", help="recording folder (or one .arrow stream file)")
    p.add_argument("--through", metavar="CONFIG", help="pipeline YAML whose live sources the recording replaces")
    p.add_argument("--shadow", action="store_true", help="mute actuator sinks (record their commands instead)")
    p.add_argument("--golden", metavar="DIR", help="recording of a known-good run to diff every stream against")
    p.add_argument("--tolerance", type=float, default=0.0, help="absolute tolerance on numeric fields (default 0)")
    p.add_argument("--executor", choices=EXECUTORS, default=None)
    p.add_argument("--pacing", choices=("max", "realtime"), default="max")
    p.add_argument("--speed", type=float, default=1.0, help="realtime speed factor")
    p.add_argument("--start-s", type=float, default=0.0, help="start this far into the recording")
    p.add_argument("--streams", default=None, help="comma-separated streams to play (without --through)")
    p.add_argument("--loop", action="store_true", help="play forever (without --golden)")
    p.add_argument("--record", metavar="OUT", help="record the run's streams into this new folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.PARAM=VALUE")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="write the run summary and diff here")
    p.add_argument("--strict", action="store_true", help="refuse a recording that is not complete and undamaged")
    p.add_argument("--foxglove", metavar="HOST:PORT", help="serve the replay to Foxglove/Lichtblick (with --pacing realtime)")
    p.set_defaults(func=cmd_replay)

    e = subparsers.add_parser("export", help="export a recording's streams to MCAP (Foxglove), Parquet or AEDAT4")
    e.add_argument("recording", metavar="DIR")
    e.add_argument("--to", dest="fmt", choices=("mcap", "parquet", "aedat4"), required=True)
    e.add_argument("out", metavar="OUT", help=".mcap file, folder (parquet) or .aedat4 file")
    e.add_argument("--stream", default=None, help="the stream to export (default: all / the only events stream)")
    e.add_argument("--window-ms", type=float, default=33.0, help="mcap: events rendered as one image per window")
    e.add_argument("--no-views", action="store_true", help="mcap: only the lossless Arrow channels")
    e.add_argument("--compression", choices=("zstd", "lz4", "none"), default="zstd", help="mcap chunk compression")
    e.set_defaults(func=cmd_export)

    i = subparsers.add_parser("import", help="turn an event file (AEDAT4, EVT, DAT, ...) or an MCAP file into a recording")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--to", dest="out", required=True, metavar="DIR", help="new recording folder")
    i.add_argument("--op", default=None, help="source operator to read the file with (default by extension)")
    i.add_argument("--node", default="camera", help="node name the streams get (camera -> camera.out)")
    i.add_argument("--set", dest="overrides", action="append", default=[], metavar="PARAM=VALUE")
    i.add_argument("--strict", action="store_true", help=STRICT_HELP)
    i.set_defaults(func=cmd_import)


# --- what `reflexarc run` adds around a run: --record, --strict, --foxglove --------------


def tap_record(graph, directory: str, streams: list[str] | None) -> list[str]:
    """Record into `directory`, combined with the config's own `record:` block if it has one.

    One tap: `--record DIR` replaces the block's folder and keeps its options (compression,
    rotation, ...); `--streams` replaces its streams, else the block's streams are kept.
    Returns what was done, for the user.
    """
    notes = []
    old = graph.nodes.get("__record__")
    options: dict = {}
    if old is not None:
        p = old.op.params
        options = p.model_dump(exclude={"dir", "streams", "config", "schemas_b64"}, exclude_unset=True)
        notes.append(f"--record {directory} replaces the config's record.dir '{p.dir}' (its other record: "
                     f"options are kept)" + ("" if streams else f"; recording its streams: {', '.join(p.streams)}"))
        if streams is None:
            streams = list(p.streams)
        del graph.nodes["__record__"]
    if streams is None:
        streams = [f"{n.id}.{p}" for n in graph.nodes.values() for p in n.op.outputs]
    graph.tap(streams, directory, **options)
    return notes


def make_strict(graph) -> list[str]:
    """Every node with an `on_error` parameter raises on a bad packet instead of skipping it."""
    changed = []
    for node_id, node in list(graph.nodes.items()):
        fields = type(node.op).Params.model_fields
        if "on_error" in fields and getattr(node.op.params, "on_error", None) != "raise":
            params = node.op.params.model_dump(exclude_unset=True)
            graph.replace(node_id, node.op.name, {**params, "on_error": "raise"})
            changed.append(node_id)
    return changed


def skipped_warnings(graph, results: dict) -> list[str]:
    """One line per source that skipped bad input: node, file, how many, the first and why."""
    lines = []
    for node_id, res in results.items():
        if not isinstance(res, dict):
            continue
        count = res.get("skipped_packets") or res.get("bad_datagrams") or 0
        if not count:
            continue
        node = graph.nodes.get(node_id)
        op = node.op if node is not None else None
        params = op.params if op is not None else None
        where = getattr(params, "path", None) or (
            f"{params.host}:{params.port}" if params is not None and hasattr(params, "port") else "its input")
        what = "datagram" if "bad_datagrams" in res and not res.get("skipped_packets") else "packet"
        first = res.get("first_skip")
        lines.append(
            f"node '{node_id}' ({op.name if op else '?'}) skipped {count} bad {what}{'s' if count != 1 else ''} "
            f"of '{where}'" + (f" (first: {first})" if first else "")
        )
    return lines


class RunExtras:
    """What `run` adds around a graph: a combined record tap, strictness, the live viewer.

    Used as a context around the run: on an error the recordings are marked failed (with
    the error) and the viewer stops; `after(result)` gives the skipped-input warnings and,
    with `strict`, raises on them.
    """

    def __init__(self, graph, *, record: str | None = None, streams: list[str] | None = None,
                 strict: bool = False, foxglove: str | None = None, foxglove_hz: float = 30.0):
        self.graph, self.strict = graph, strict
        self.notes: list[str] = []
        self.viewer = None
        if streams is not None and not record:
            raise ConfigError([Problem(None, "--streams", "names the streams --record records: give --record DIR too")])
        if strict:
            made = make_strict(graph)
            if made:
                self.notes.append(f"--strict: {', '.join(made)} raise on a bad packet (on_error: raise)")
        if record:
            self.notes += tap_record(graph, record, streams)
        if foxglove:
            from pipeline.foxglove import LiveViewer

            self.viewer = LiveViewer(foxglove, max_hz=foxglove_hz)
            self.viewer.tap(graph)
        graph.check()

    def __enter__(self) -> RunExtras:
        if self.viewer is not None:
            self.viewer.start()
            self.notes.append(f"Foxglove: open ws://{self.viewer.address} in Foxglove or Lichtblick "
                              "(Open connection -> Foxglove WebSocket)")
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        from pipeline.recording import mark_failed, recording_dirs

        if self.viewer is not None:
            self.viewer.stop()
        if exc is not None:
            why = "stopped by the user (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else str(exc)
            for folder in recording_dirs(self.graph):
                mark_failed(folder, why)
        return False

    def after(self, result) -> list[str]:
        """Warnings for skipped input (raises DataError with them under `strict`)."""
        lines = skipped_warnings(self.graph, result.results)
        if lines and self.strict:
            from pipeline.recording import mark_failed, recording_dirs

            error = DataError("; ".join(lines) + " (--strict)")
            for folder in recording_dirs(self.graph):
                mark_failed(folder, error)
            raise error
        return lines


def _executor(args) -> str:
    if args.executor:
        return args.executor
    if args.through:
        try:
            with open(args.through) as fh:
                chosen = (yaml.safe_load(fh) or {}).get("executor")
        except (OSError, yaml.YAMLError, AttributeError):
            chosen = None
        if isinstance(chosen, str):
            return chosen
        if isinstance(chosen, dict) and isinstance(chosen.get("kind"), str):
            return chosen["kind"]
    return "local"


def cmd_replay(args) -> int:
    from pipeline.metrics import table
    from pipeline.replay import replay

    console = Console(soft_wrap=True)
    if args.loop and args.golden:
        raise ConfigError("--loop never ends, so it cannot be diffed against --golden")
    streams = [s.strip() for s in args.streams.split(",")] if args.streams else None
    out = replay(
        args.recording, args.through, executor=_executor(args), pacing=args.pacing, speed=args.speed,
        start_s=args.start_s, loop=args.loop, streams=streams, record=args.record, shadow=args.shadow,
        golden=args.golden, tolerance=args.tolerance, overrides=args.overrides, strict=args.strict,
        foxglove=args.foxglove,
    )
    notes, result, report = out["notes"], out["run"], out["diff"]
    for why in notes.get("input_problems", []):
        print(f"warning: the recording is not complete: {why}; --strict makes this an error", file=sys.stderr)
    for node, played in notes["replayed"].items():
        console.print(f"replayed [bold]{node}[/] from {', '.join(played)}")
    for node in notes["muted"]:
        console.print(f"muted actuator [bold]{node}[/] (shadow run: its commands are recorded, never sent)")
    if notes.get("dropped_record"):
        console.print("the config's own `record:` was ignored (use --record OUT to record the replay)")
    from pipeline.metrics import console as table_console

    table_console().print(table(result.metrics, title=f"replay of {args.recording} ({result.executor}, {result.wall_s:.2f} s)"))
    if out["recorded"]:
        console.print(f"recorded into {out['recorded']}")
    if notes.get("foxglove"):
        print(notes["foxglove"], file=sys.stderr)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"run": result.summary(), "diff": report, "notes": notes}, fh, indent=2, default=str)
    if report is None:
        return 0
    print_diff(report, console)
    return 0 if report["ok"] else 1


def print_diff(report: dict, console: Console | None = None) -> None:
    """First divergence per stream, then a one-line summary."""
    console = console or Console(soft_wrap=True)
    for stream, res in report["streams"].items():
        if res["status"] == "identical":
            console.print(f"[green]same[/]     {stream}: {res['rows_golden']:,} rows")
        elif res["status"] == "missing":
            console.print(f"[red]missing[/]  {stream}: in the golden run, not produced by this one")
        else:
            f = res["first"]
            at = f"t={f['t_us']} us" if f["t_us"] is not None else "no t"
            console.print(
                f"[red]diverged[/] {stream}: first at row {f['row']:,} ({at}), field '{f['field']}': "
                f"old {f['old']!r} -> new {f['new']!r}; {res['rows_diverged']:,} rows differ "
                f"(golden {res['rows_golden']:,} rows, new {res['rows_new']:,})"
            )
    for stream in report["extra"]:
        console.print(f"[yellow]new[/]      {stream}: not in the golden run (not compared)")
    n = len(report["identical"]) + len(report["diverged"]) + len(report["missing"])
    verdict = "[green]OK[/]" if report["ok"] else "[red]DIVERGED[/]"
    console.print(
        f"{verdict}: {n} streams compared against {report['golden']} (tolerance {report['tolerance']}): "
        f"{len(report['identical'])} same, {len(report['diverged'])} diverged, {len(report['missing'])} missing"
    )


def cmd_export(args) -> int:
    from pipeline.recording import export_aedat4, export_parquet

    console = Console(soft_wrap=True)
    if args.fmt == "mcap":
        from pipeline.mcap_io import export_mcap

        done = export_mcap(args.recording, args.out, [args.stream] if args.stream else None,
                           window_ms=args.window_ms, views=not args.no_views, compression=args.compression)
        for stream, n in done["streams"].items():
            topic = "/" + stream.replace(".", "/")
            console.print(f"{stream} -> {done['path']}: {topic}/arrow ({n['batches']:,} batches, lossless)"
                          + (f", {topic} ({n['view_messages']:,} Foxglove messages)" if n["view_messages"] else ""))
    elif args.fmt == "parquet":
        written = export_parquet(args.recording, args.out, [args.stream] if args.stream else None)
        for stream, path in written.items():
            console.print(f"{stream} -> {path}/ (Parquet dataset)")
    else:
        done = export_aedat4(args.recording, args.out, args.stream)
        console.print(f"{done['stream']} -> {done['path']} ({done['rows']:,} events)")
    return 0


def cmd_import(args) -> int:
    from pipeline.recording import import_file

    params = {}
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set '{item}' is not of the form param=value")
        params[key.strip()] = yaml.safe_load(raw)
    done = import_file(args.file, args.out, op=args.op, params=params, node=args.node, strict=args.strict)
    for stream, counts in done["streams"].items():
        Console().print(f"{stream}: {counts['rows']:,} rows in {counts['batches']:,} batches -> {done['dir']}")
    for line in done.get("warnings", []):
        print(f"warning: {line}; --strict makes this an error", file=sys.stderr)
    return 0


def main(argv=None) -> int:  # pragma: no cover - the lead's `reflexarc` CLI is the entry point
    parser = argparse.ArgumentParser(prog="reflexarc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
