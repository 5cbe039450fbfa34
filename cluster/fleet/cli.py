"""`reflexarc fleet serve|status|deploy|rollout|promote|rollback|stop`."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from edge.wire import valid_name
from pipeline.errors import ConfigError


def _common(p, manager=True):
    p.add_argument("--keys", default="keys", help="keys folder (reflexarc keys init)")
    if manager:
        p.add_argument("--manager", default="tcp://127.0.0.1:5600", help="the manager's endpoint")


def register(subparsers) -> None:
    fleet = subparsers.add_parser("fleet", help="the fleet manager and its admin commands")
    sub = fleet.add_subparsers(dest="fleet_cmd", required=True)

    p = sub.add_parser("serve", help="run the fleet manager")
    _common(p, manager=False)
    p.add_argument("--bind", default="tcp://127.0.0.1:5600")
    p.add_argument("--out", default="out/fleet", help="telemetry recording and status go here")
    p.add_argument("--heartbeat-s", type=float, default=0.5)
    p.add_argument("--lost-after-s", type=float, default=2.0)
    p.add_argument("--for-s", type=float, default=None, help="stop after this long")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="the fleet table")
    _common(p)
    p.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("deploy", help="send a pipeline config to robots")
    _common(p)
    p.add_argument("config")
    p.add_argument("--to", default="all", help="NAME[,NAME], tag:TAG or all")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="override a parameter")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rollout", help="send a new model version to a fraction of the robots (or canary it)")
    _common(p)
    p.add_argument("model", help="the model file (e.g. a .nir)")
    p.add_argument("--version", required=True, help="its name: [A-Za-z0-9._-], not dots alone")
    p.add_argument("--fraction", type=float, default=0.1, help="live on this share of the robots")
    p.add_argument("--canary", default=None, metavar="PCT%%|NAME[,NAME]",
                   help="run it in shadow on this share (10%%) or these robots, then promote or roll back by itself")
    p.add_argument("--threshold", type=float, default=0.95, help="canary: agreement needed to promote")
    p.add_argument("--window", type=int, default=20, help="canary: decisions compared per robot before a verdict")
    p.add_argument("--latency-factor", type=float, default=3.0,
                   help="canary: roll back when the shadow's median latency exceeds this x the live model's (+1 ms)")
    p.add_argument("--canary-timeout-s", type=float, default=600.0, help="canary: roll back without a verdict after")
    p.add_argument("--to", default="all")
    p.set_defaults(func=cmd_rollout)

    for name in ("promote", "rollback"):
        p = sub.add_parser(name, help=f"{name} the rollout in progress")
        _common(p)
        p.set_defaults(func=cmd_admin, op=name)

    p = sub.add_parser("offload", help="serve one pipeline stage to robots' `offload` nodes")
    _common(p, manager=False)
    p.add_argument("--bind", default="tcp://127.0.0.1:5700")
    p.add_argument("--op", required=True, help="registry name of the stage's operator")
    p.add_argument("--params", default="{}", help="its params as JSON")
    p.add_argument("--ray", action="store_true", help="run the stage in a Ray actor")
    p.set_defaults(func=cmd_offload)

    p = sub.add_parser("stop", help="put robots into their safe state and stop their loops")
    _common(p)
    p.add_argument("--to", default="all")
    p.set_defaults(func=cmd_admin, op="stop")


def cmd_serve(args) -> int:
    from rich.console import Console

    from cluster.fleet.manager import Manager, ManagerOptions

    _raise_open_files()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    timer = None
    if args.for_s:
        timer = threading.Timer(args.for_s, stop.set)
        timer.daemon = True  # a manager that ended early must not wait out its time (or ignore SIGTERM)
        timer.start()
    mgr = Manager(ManagerOptions(bind=args.bind, keys=args.keys, out=args.out, heartbeat_s=args.heartbeat_s,
                                 lost_after_s=args.lost_after_s))
    Console(stderr=True).print(f"fleet manager on {args.bind}, {len(mgr.known)} authorized keys, "
                               f"telemetry -> {Path(args.out) / 'telemetry'}")
    try:
        mgr.serve(stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if timer is not None:
            timer.cancel()
    return 0


def _raise_open_files() -> None:
    """Each robot holds a connection and a telemetry file open: lift the soft limit on open
    files to the hard one (often 1,024 of 4,096+), so a thousand robots fit one manager."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    except (ImportError, ValueError, OSError):
        pass


def cmd_offload(args) -> int:
    import json

    from cluster.fleet.offload import serve_offload

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise ConfigError(f"--params is not JSON: {exc}") from None
    try:
        print(serve_offload(args.bind, args.keys, args.op, params, stop=stop, ray=args.ray))
    except KeyboardInterrupt:
        stop.set()
    return 0


def cmd_status(args) -> int:
    import json

    from cluster.fleet.admin import request, status_table

    if args.json:
        print(json.dumps(request(args.manager, args.keys, "status"), indent=2))
        return 0
    if not args.watch:
        from pipeline.metrics import console as table_console  # full width when piped

        table_console().print(status_table(request(args.manager, args.keys, "status")))
        return 0
    from rich.live import Live

    with Live(refresh_per_second=2) as live:
        try:
            while True:
                live.update(status_table(request(args.manager, args.keys, "status")))
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_deploy(args) -> int:
    from cluster.fleet.admin import request
    from edge.cli import config_with

    config = config_with(args.config, args.set)  # checked here first: ConfigError (exit 2) lists every problem
    reply = request(args.manager, args.keys, "deploy", config=config, target=args.to)
    if not reply.get("ok"):
        print(f"error: {reply.get('error')}")
        return 1
    print(f"deployed {reply['version']} to {len(reply['agents'])} robot(s): {', '.join(reply['agents'])}")
    return 0


def cmd_rollout(args) -> int:
    from cluster.fleet.admin import request

    path = Path(args.model)
    if not valid_name(args.version):
        raise ConfigError(f"--version {args.version!r}: use [A-Za-z0-9._-], 1-64 characters, not dots alone")
    if not path.is_file():
        raise ConfigError(f"model file '{path}' does not exist")
    if not valid_name(path.name):
        raise ConfigError(f"model file name '{path.name}': use [A-Za-z0-9._-] (rename the file)")
    if not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction {args.fraction}: expected a share in (0, 1]")
    head = dict(version=args.version, file=path.name, fraction=args.fraction, target=args.to)
    if args.canary is not None:
        head["canary"] = canary_request(args)
    reply = request(args.manager, args.keys, "rollout", data=path.read_bytes(), **head)
    if not reply.get("ok"):
        print(f"error: {reply.get('error')}")
        return 1
    how = "in shadow (canary) " if reply.get("mode") == "shadow" else ""
    print(f"rolled out {args.version} ({reply['sha256'][:12]}) {how}to {len(reply['canary'])} robot(s): "
          f"{', '.join(reply['canary'])}")
    return 0


def canary_request(args) -> dict:
    """The `canary` object of a rollout request from `--canary 10%` or `--canary r1,r2` and its options."""
    spec = args.canary.strip()
    out = {"threshold": args.threshold, "window": args.window, "timeout_s": args.canary_timeout_s,
           "latency_factor": args.latency_factor}
    if spec.endswith("%"):
        try:
            pct = float(spec[:-1])
        except ValueError:
            pct = -1.0
        if not 0 < pct <= 100:
            raise ConfigError(f"--canary {spec!r}: expected a share like 10% (0-100]")
        out["fraction"] = pct / 100.0
    else:
        names = [n for n in spec.split(",") if n]
        bad = [n for n in names if not valid_name(n)]
        if not names or bad:
            raise ConfigError(f"--canary {spec!r}: expected 10% or robot names NAME[,NAME]")
        out["robots"] = names
    if not 0 <= args.threshold <= 1 or args.window < 1 or args.latency_factor < 1 or args.canary_timeout_s <= 0:
        raise ConfigError("--threshold must be in [0, 1], --window >= 1, --latency-factor >= 1, "
                          "--canary-timeout-s > 0")
    return out


def cmd_admin(args) -> int:
    from cluster.fleet.admin import request

    reply = request(args.manager, args.keys, args.op, target=getattr(args, "to", None))
    if not reply.get("ok"):
        print(reply.get("error"))
        return 1
    why = f" ({reply['why']})" if reply.get("why") else ""
    print(f"{args.op}: {', '.join(reply.get('agents', []))}{why}")
    return 0
