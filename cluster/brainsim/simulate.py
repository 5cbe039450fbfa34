"""One call that simulates a network, records its spikes and reports on it (the CLI's body)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import yaml

from cluster.brainsim.engine import Simulation
from cluster.brainsim.report import plot, population_stats
from cluster.brainsim.spec import NetworkSpec
from pipeline import schemas as sch
from pipeline.errors import ConfigError


def load_config(path: str | Path, overrides=()) -> tuple[NetworkSpec, dict]:
    """The network and the `brainsim` node's other params from a config file.

    A config is a pipeline whose source node has `op: brainsim` (so `reflexarc run` runs it
    too), a bare mapping with a `network:` key, or a SONATA simulation or circuit config
    (`.json`; its `run.tstop` is the duration). A `network: {sonata: PATH}` is read
    relative to the config's folder. `overrides` are `key=value` strings for
    keys under the node's params (`network.scale=0.5`, `duration_s=2`; a leading
    `NODE.` or `NODE.params.` is accepted too), values read as YAML scalars. The params
    are checked as the source's `BrainsimParams`: a wrong key or value is a ConfigError
    naming the file and the field.
    """
    from pipeline.graph import read_yaml

    path = Path(path)
    params, node = None, None
    if path.suffix == ".json":  # a SONATA simulation or circuit config
        from cluster.brainsim import sonata

        circuit = sonata.read(path)
        params = {"network": {"sonata": str(path.resolve())}}
        if circuit.duration_s:
            params["duration_s"] = circuit.duration_s
        for item in overrides or ():
            set_key(params, item, None)
        return checked(params, str(path))
    doc = read_yaml(path)
    if isinstance(doc, dict) and isinstance(doc.get("nodes"), dict):
        for name, spec in doc["nodes"].items():
            if isinstance(spec, dict) and spec.get("op") == "brainsim":
                params, node = dict(spec.get("params") or {}), name
                break
        if params is None:
            raise ConfigError(f"{path}: no node with op: brainsim")
    elif isinstance(doc, dict) and "network" in doc:
        params = dict(doc)
    else:
        raise ConfigError(f"{path}: expected a pipeline with a brainsim node or a `network:` mapping")
    for item in overrides or ():
        set_key(params, item, node)
    net = params.get("network")
    if isinstance(net, dict) and isinstance(net.get("sonata"), str) and not Path(net["sonata"]).is_absolute():
        params["network"] = {**net, "sonata": str((path.parent / net["sonata"]).resolve())}
    return checked(params, str(path))


def set_key(params: dict, item: str, node: str | None = None) -> None:
    """Apply one `key.sub=value` override to a params mapping (values are YAML scalars)."""
    key, sep, raw = str(item).partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not sep or not parts:
        raise ConfigError(f"--set '{item}' is not of the form key=value (e.g. network.scale=0.5)")
    if node is not None and parts[0] == node and len(parts) > 1:
        parts = parts[2:] if parts[1] == "params" else parts[1:]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    target = params
    for p in parts[:-1]:
        nxt = target.get(p)
        if nxt is None:
            nxt = target[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"--set '{item}': '{p}' is {nxt!r}, not a mapping")
        else:
            nxt = target[p] = dict(nxt)
        target = nxt
    target[parts[-1]] = value


def checked(params: dict, where: str) -> tuple[NetworkSpec, dict]:
    """Validate a brainsim node's params; return its network and the rest (defaults filled)."""
    from pydantic import ValidationError

    from cluster.brainsim.operator import BrainsimParams

    try:
        p = BrainsimParams(**params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'params'}: {e['msg']}"
                             + (f" (got {e['input']!r})" if not isinstance(e.get("input"), dict) else "")
                             for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    rest = p.model_dump(exclude={"network"})
    return p.network, rest


def simulate(spec: NetworkSpec, duration_s: float, actors: int = 1, backend: str | None = None,
             out: str | Path | None = None, transient_ms: float = 100.0, batch_ms: float = 100.0,
             address: str | None = None) -> dict:
    """Run `spec` for `duration_s` biological seconds; write spikes, report and plots to `out`.

    Returns the report: per-population rate, CV ISI and synchrony (after dropping the first
    `transient_ms`), network size, synapse memory, wall time and real-time factor (wall
    time over biological time), and how long partitions waited for each other's windows.
    `address` joins a Ray cluster (backend `ray`, the default for more than one partition).
    """
    backend = backend or ("ray" if actors > 1 else "inline")
    sim = Simulation(spec, actors=actors, backend=backend, address=address)
    layout = sim.layout
    folder = Path(out) if out else None
    recorder = None
    schemas = {name: sch.spikes_schema(name, hi - lo)
               for name in layout.names for lo, hi in [layout.population_of(name)]}
    if folder is not None:
        from pipeline.recording import Record, RecordParams

        folder.mkdir(parents=True, exist_ok=True)
        streams = [f"brainsim.{name}" for name in layout.names]
        recorder = Record(RecordParams(dir=str(folder), streams=streams, overwrite=True,
                                       config={"network": spec.model_dump(), "duration_s": duration_s,
                                               "actors": actors, "backend": backend}))
        recorder.schemas({s.replace(".", "__"): schemas[s.split(".", 1)[1]] for s in streams})
        recorder.setup()
    t_build = time.perf_counter()
    sim.build()
    build_s = time.perf_counter() - t_build
    info = sim.info()
    collected: dict[str, list] = {name: [] for name in layout.names}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        for batch in sim.batches(duration_s, batch_ms):
            t = sch.column(batch, "t")
            neuron = sch.column(batch, "neuron").astype(np.int64)
            for name in layout.names:
                lo, hi = layout.population_of(name)
                sel = (neuron >= lo) & (neuron < hi)
                part = sch.spikes_batch(t[sel], neuron[sel] - lo, schemas[name])
                collected[name].append((t[sel], neuron[sel] - lo))
                if recorder is not None:
                    recorder.process(f"brainsim__{name}", part)
        wall_s = time.perf_counter() - t0
        cpu_s = time.process_time() - c0
        times = sim.partition_times()
    finally:
        if recorder is not None:
            recorder.close()
        sim.close()
    duration_ms = duration_s * 1e3
    transient_ms = min(transient_ms, duration_ms / 2)  # a short run keeps half its time for statistics
    pops, spikes = {}, {}
    for name in layout.names:
        lo, hi = layout.population_of(name)
        t_us = np.concatenate([c[0] for c in collected[name]]) if collected[name] else np.empty(0, np.int64)
        nrn = np.concatenate([c[1] for c in collected[name]]) if collected[name] else np.empty(0, np.int64)
        spikes[name] = (t_us / 1e3, nrn, hi - lo)
        pops[name] = population_stats(t_us / 1e3, nrn, hi - lo, duration_ms, transient_ms)
    waits = [t["wait_s"] for t in times]
    windows = max(1, sim.stats["windows"])
    report = {
        "network": spec.model if spec.model != "custom" else "custom",
        "options": spec.options,
        "scale": spec.scale,
        "duration_s": duration_s,
        "dt_ms": layout.dt_ms,
        "seed": spec.seed,
        **{k: v for k, v in info.items() if k != "build_s"},
        "build_s": build_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,  # this process only: excludes Ray actors' time (see actor_busy_s)
        "real_time_factor": wall_s / duration_s,
        "windows": sim.stats["windows"],
        "exchange_s": sim.stats["exchange_s"],  # inline: the runner's merges; board backends: see wait
        "spikes_per_window": sim.stats["spikes_exchanged"] / max(1, sim.stats["windows"]),
        "bytes_exchanged": sim.stats["bytes_exchanged"],
        "actor_busy_s": [t["busy_s"] for t in times],  # CPU in runs, spinning included
        "partition_wait_s": waits,  # waiting for other partitions' windows (imbalance + exchange)
        "wait_us_per_window": 1e6 * (sum(waits) / len(waits)) / windows if waits else 0.0,
        "transient_ms": transient_ms,
        "populations": pops,
    }
    if folder is not None:
        report["plots"] = plot(spikes, duration_ms, folder)
        (folder / "report.json").write_text(json.dumps(report, indent=2))
    return report
