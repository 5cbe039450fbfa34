"""`reflexarc brainsim CONFIG --actors K --duration 10s [--out DIR]`: simulate, record, report."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import ConfigError


def parse_duration(text: str) -> float:
    """'10s', '500ms', '2.5' (seconds) -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|min)?\s*", text)
    if not m:
        raise ConfigError(f"--duration '{text}' is not a time (expected e.g. 10s, 500ms)")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "min": 60.0, None: 1.0}[m.group(2)]


def cmd_brainsim(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from cluster.brainsim.simulate import load_config, simulate

    overrides = list(args.set or [])
    for flag, key in (("scale", "network.scale"), ("seed", "network.seed"), ("state", "network.options.state")):
        if getattr(args, flag) is not None:  # the old flags are aliases of --set
            overrides.append(f"{key}={getattr(args, flag)}")
    spec, params = load_config(args.config, overrides)
    duration = parse_duration(args.duration) if args.duration else float(params["duration_s"])
    actors = args.actors if args.actors is not None else params["actors"]
    backend = args.backend or params["backend"]
    backend = None if backend == "auto" else backend
    address = args.address or params.get("address")
    out = Path(args.out) if args.out else Path("out") / f"brainsim-{Path(args.config).stem}"
    console = Console()
    console.print(f"simulating {Path(args.config).name}: {duration:g} s biological time on {actors} "
                  f"partition(s) ...")
    try:
        rep = simulate(spec, duration, actors=actors, backend=backend, out=out, address=address,
                       transient_ms=args.transient_ms)
    except ValueError as exc:
        raise ConfigError(f"{args.config}: {exc}") from None
    table = Table(title=f"{rep['network']} ({rep['neurons']:,} neurons, {rep['synapses']:,} synapses)",
                  caption=f"statistics over {duration * 1e3 - rep['transient_ms']:g} ms: the first "
                          f"{rep['transient_ms']:g} ms (warm-up transient) are dropped")
    for col in ("population", "neurons", "rate (Hz)", "CV ISI", "chi", "Fano (pop)"):
        table.add_column(col, justify="right")
    for name, s in rep["populations"].items():
        table.add_row(name, f"{s['neurons']:,}", f"{s['rate_hz']:.2f}", f"{s['cv_isi']:.2f}",
                      f"{s['chi']:.3f}", f"{s['fano_pop']:.2f}")
    console.print(table)
    console.print(f"wall {rep['wall_s']:.2f} s (build {rep['build_s']:.2f} s), real-time factor "
                  f"{rep['real_time_factor']:.2f}, {rep['bytes_per_synapse']:.2f} bytes/synapse, "
                  f"{rep['windows']} exchange windows of {rep['window_ms']:g} ms")
    if rep["partition_wait_s"]:
        console.print(f"{rep['actors']} partitions ({rep['backend']}, {rep['nodes']} node(s)) waited "
                      f"{rep['wait_us_per_window']:.1f} us per window for each other")
        waited = sum(rep["partition_wait_s"]) / len(rep["partition_wait_s"])
        if waited > 0.5 * rep["wall_s"]:
            console.print(f"[yellow]the partitions spent {100 * waited / rep['wall_s']:.0f} % of the run waiting for "
                          f"each other: with {rep['window_ms']:g} ms windows (the shortest delay) or fewer free "
                          f"cores than partitions, fewer partitions are faster[/yellow]")
    console.print(f"recording, report.json, raster.png, rates.png in {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("brainsim", help="simulate a spiking network (over Ray actors) and report on it")
    p.add_argument("config", help="a config with a brainsim node (configs/brunel.yaml, configs/cuba.yaml)")
    p.add_argument("--actors", type=int, default=None, help="partitions (default: the config's, else 1)")
    p.add_argument("--duration", default=None, help="biological time, e.g. 10s or 500ms")
    p.add_argument("--out", default=None, help="output folder (default out/brainsim-<config>)")
    p.add_argument("--backend", choices=("auto", "inline", "threads", "ray"), default=None,
                   help="auto: Ray actors when more than one partition")
    p.add_argument("--address", default=None, help="join this Ray cluster (ray://..., HOST:PORT or auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key under the brainsim node's params, e.g. network.scale=0.5 (repeatable)")
    p.add_argument("--transient-ms", type=float, default=100.0,
                   help="warm-up transient dropped from the statistics (at most half the run)")
    p.add_argument("--scale", type=float, default=None, help="alias of --set network.scale=...")
    p.add_argument("--seed", type=int, default=None, help="alias of --set network.seed=...")
    p.add_argument("--state", default=None, help="alias of --set network.options.state=... (Brunel: AI, SR, ...)")
    p.set_defaults(func=cmd_brainsim)
