"""`reflexarc edge run CONFIG --manager ... --name ... --tags ...` and `reflexarc keys ...`."""

from __future__ import annotations

import json
import signal
import threading


def register(subparsers) -> None:
    edge = subparsers.add_parser("edge", help="run a robot's pipeline linked to a fleet manager")
    sub = edge.add_subparsers(dest="edge_cmd", required=True)
    p = sub.add_parser("run", help="run CONFIG locally and connect to the manager")
    p.add_argument("config", help="pipeline YAML, or 'none' to start empty and wait for a deploy")
    p.add_argument("--manager", default="tcp://127.0.0.1:5600")
    p.add_argument("--name", required=True, help="this robot's name (its key is KEYS/NAME.key_secret)")
    p.add_argument("--tags", default="", help="comma-separated tags")
    p.add_argument("--keys", default="keys")
    p.add_argument("--telemetry-hz", type=float, default=10.0)
    p.add_argument("--deadline-ms", type=float, default=250.0, help="watchdog deadline per wave")
    p.add_argument("--work-dir", default=None, help="spool and received models (default .reflexarc/agent-NAME)")
    p.add_argument("--exit-when-done", action="store_true", help="exit when the pipeline ends")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="override a parameter")
    p.add_argument("--telemetry-rows", type=int, default=1, help="telemetry rows per message (batch at high rates)")
    p.add_argument("--mem-kb", type=int, default=4096, help="telemetry kept in memory before spilling to disk")
    p.add_argument("--resend-s", type=float, default=5.0,
                   help="resend unacknowledged telemetry after this long without progress (at least; adapts to the round trip)")
    p.set_defaults(func=cmd_edge_run)

    keys = subparsers.add_parser("keys", help="CurveZMQ key pairs for a fleet")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    p = ksub.add_parser("init", help="manager + admin key pairs (and robots') in a folder")
    p.add_argument("folder")
    p.add_argument("--agents", default="", help="comma-separated robot names")
    p.add_argument("--force", action="store_true", help="replace existing key pairs (deployed robots lose access)")
    p.set_defaults(func=cmd_keys_init)
    p = ksub.add_parser("add", help="a key pair for a robot, authorized with the manager")
    p.add_argument("folder")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="replace the robot's existing key pair")
    p.set_defaults(func=cmd_keys_add)


def config_with(path: str, overrides=(), check: bool = True) -> dict:
    """A pipeline config read from `path` with `--set node.param=value` overrides applied and,
    with `check`, validated here (ConfigError, exit 2, lists every problem) before it travels."""
    from pipeline.errors import ConfigError, Problem
    from pipeline.graph import Graph, apply_overrides, read_yaml

    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        what = "empty" if data is None else "not a pipeline (no 'nodes' mapping)"
        raise ConfigError(f"config is {what}: expected name and nodes", path)
    problems: list[Problem] = []
    apply_overrides(data, overrides, problems)
    if problems:
        raise ConfigError(problems, path)
    if check:
        Graph.from_dict(data, source=path).check()
    return data


def cmd_edge_run(args) -> int:
    from edge.agent import Agent, AgentOptions

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent = Agent(AgentOptions(
        name=args.name, manager=args.manager, keys=args.keys,
        tags=[t for t in args.tags.split(",") if t],
        config=None if args.config == "none" else config_with(args.config, args.set) if args.set else args.config,
        telemetry_hz=args.telemetry_hz, telemetry_rows=max(1, args.telemetry_rows), deadline_ms=args.deadline_ms, work_dir=args.work_dir,
        exit_when_done=args.exit_when_done, mem_bytes=args.mem_kb * 1024, resend_s=args.resend_s,
    ))
    try:
        report = agent.run(stop)
    except KeyboardInterrupt:
        stop.set()
        return 130
    print(json.dumps(report, default=str))
    return 0 if not report["errors"] else 1


def cmd_keys_init(args) -> int:
    from edge.keys import init_fleet

    made = init_fleet(args.folder, [a for a in args.agents.split(",") if a], force=args.force)
    for name, path in made.items():
        print(f"{name}: {path}")
    return 0


def cmd_keys_add(args) -> int:
    from edge.keys import make_pair

    public, secret = make_pair(args.folder, args.name, authorize=True, force=args.force)
    print(f"{args.name}: {public} (secret {secret}); copy the secret and manager.key to the robot")
    return 0
