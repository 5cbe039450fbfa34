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

    spec, params = load_config(args.config)
    update = {}
    if args.scale is not None:
        update["scale"] = args.scale
    if args.seed is not None:
        update["seed"] = args.seed
    if args.state is not None:
        update["options"] = {**spec.options, "state": args.state}
    if update:
        spec = spec.model_copy(update=update)
    duration = parse_duration(args.duration) if args.duration else float(params.get("duration_s", 1.0))
    out = Path(args.out) if args.out else Path("out") / f"brainsim-{Path(args.config).stem}"
    backend = None if args.backend == "auto" else args.backend
    console = Console()
    console.print(f"simulating {Path(args.config).name}: {duration:g} s biological time on {args.actors} "
                  f"partition(s) ...")
    try:
        rep = simulate(spec, duration, actors=args.actors, backend=backend, out=out)
    except ValueError as exc:
        raise ConfigError(f"{args.config}: {exc}") from None
    table = Table(title=f"{rep['network']} ({rep['neurons']:,} neurons, {rep['synapses']:,} synapses)")
    for col in ("population", "neurons", "rate (Hz)", "CV ISI", "chi", "Fano (pop)"):
        table.add_column(col, justify="right")
    for name, s in rep["populations"].items():
        table.add_row(name, f"{s['neurons']:,}", f"{s['rate_hz']:.2f}", f"{s['cv_isi']:.2f}",
                      f"{s['chi']:.3f}", f"{s['fano_pop']:.2f}")
    console.print(table)
    console.print(f"wall {rep['wall_s']:.2f} s (build {rep['build_s']:.2f} s), real-time factor "
                  f"{rep['real_time_factor']:.2f}, {rep['bytes_per_synapse']:.2f} bytes/synapse, "
                  f"{rep['windows']} exchange windows of {rep['window_ms']:g} ms")
    console.print(f"recording, report.json, raster.png, rates.png in {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("brainsim", help="simulate a spiking network (over Ray actors) and report on it")
    p.add_argument("config", help="a config with a brainsim node (configs/brunel.yaml, configs/cuba.yaml)")
    p.add_argument("--actors", type=int, default=1, help="partitions; more than 1 runs them as Ray actors")
    p.add_argument("--duration", default=None, help="biological time, e.g. 10s or 500ms")
    p.add_argument("--out", default=None, help="output folder (default out/brainsim-<config>)")
    p.add_argument("--backend", choices=("auto", "inline", "ray"), default="auto")
    p.add_argument("--scale", type=float, default=None, help="override the network's scale")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--state", default=None, help="Brunel state: AI, SR, SI_fast, SI_slow")
    p.set_defaults(func=cmd_brainsim)
