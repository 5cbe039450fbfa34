"""Distributed CMA-ES: evolve the spiking altitude controller to mimic the PID.

`reflexarc evolve configs/blimp_evolve.yaml` records PID flights over randomised set-point
trajectories and plants, then runs CMA-ES (the `cma` package) on the SNN genome. Each
generation's population is split across Ray actors that hold the training data once
(`workers: 0` evaluates in-process). The optimiser is checkpointed (pickle, written
atomically) every `checkpoint_every` generations and resumed from there on the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError, DataError, Problem
from pipeline.graph import read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayoutConfig(_Strict):
    pairs: int = Field(10, ge=1, le=40)
    hidden_size: int = Field(40, ge=1, le=120)
    hidden: Literal["adaptive", "plain", "recurrent"] = "adaptive"
    dt_s: float = Field(0.1, gt=0)
    substeps: int = Field(5, ge=1, le=50, description="network steps per control step")
    seed: int = 7


class DataConfig(_Strict):
    trajectories: int = Field(12, ge=1, le=1000, description="PID flights to mimic")
    duration_s: float = Field(60.0, gt=1)
    seed: int = 1
    plant: Literal["heave", "double_integrator"] = "heave"
    validation: int = Field(4, ge=0, description="held-out flights for the reported loss")
    closed_loop: int = Field(6, ge=0, description="flights with the SNN in the loop (0 = open-loop fit only)")


class CMAConfig(_Strict):
    sigma0: float = Field(0.5, gt=0)
    popsize: int = Field(16, ge=2, le=1000)
    generations: int = Field(150, ge=1)
    seed: int = 1


class EvolveConfig(_Strict):
    layout: LayoutConfig = LayoutConfig()
    data: DataConfig = DataConfig()
    cma: CMAConfig = CMAConfig()
    readout: Literal["lstsq", "evolve"] = "lstsq"
    ridge: float = Field(1e-3, ge=0)
    tracking_weight: float = Field(0.0, ge=0, description="add this x closed-loop tracking RMSE (m) to the loss")
    hold_weight: float = Field(0.0, ge=0, description="add this x closed-loop mean overshoot + steady-state error (m)")
    init: str | None = Field(None, description="start from this model JSON's genome (meta.genome), not snn.initial_genome")
    workers: int = Field(2, ge=0, le=256, description="Ray actors; 0 = evaluate in this process")
    checkpoint: str | None = "runs/blimp_evolve/checkpoint.pkl"
    checkpoint_every: int = Field(5, ge=1)
    out: str = "runs/blimp_evolve/blimp_snn.json"
    time_limit_s: float | None = Field(None, gt=0, description="stop (and save) after this wall time")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> EvolveConfig:
    """Read the `evolve:` mapping of a YAML file; errors name the file and field."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("evolve"), dict):
        raise ConfigError("needs a top-level 'evolve:' mapping", str(path))
    section = data["evolve"]
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set '{item}' is not of the form key=value", str(path))
        target = section
        parts = key.split(".")
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = yaml.safe_load(raw)
    try:
        return EvolveConfig(**section)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            got = f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else ""
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(Problem("evolve", loc, f"{msg}{got}"))
        raise ConfigError(problems, str(path)) from None


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


class Evaluator:
    """Holds the PID traces and evaluates genomes (a Ray actor, or used in-process)."""

    def __init__(self, layout: dict, errors, commands, readout: str, ridge: float, closed: dict | None = None,
                 tracking_weight: float = 0.0, hold_weight: float = 0.0):
        from operators.control.pid import PID
        from operators.control.snn import Layout

        self.layout = Layout(**layout)
        self.errors, self.commands = np.asarray(errors), np.asarray(commands)
        self.readout, self.ridge = readout, ridge
        self.closed = closed
        self.tracking_weight = tracking_weight
        self.hold_weight = hold_weight
        self.pid_gains = PID(dt=self.layout.dt_s).g

    def evaluate(self, genomes: list) -> list[tuple[float, list]]:
        from operators.control.fit import evaluate

        with _one_blas_thread():
            out = []
            for g in genomes:
                loss, w = evaluate(np.asarray(g), self.layout, self.errors, self.commands, self.readout, self.ridge,
                                   self.closed, self.pid_gains, self.tracking_weight, self.hold_weight)
                out.append((float(loss) if np.isfinite(loss) else 1e3, np.asarray(w).tolist()))
            return out


class Pool:
    """Splits a population over `workers` Ray actors (or evaluates locally when 0)."""

    def __init__(self, cfg: EvolveConfig, errors, commands, closed=None, address: str | None = None):
        args = (cfg.layout.model_dump(), errors, commands, cfg.readout, cfg.ridge, closed, cfg.tracking_weight,
                cfg.hold_weight)
        self.workers = cfg.workers
        self.session = None
        if self.workers == 0:
            self.local = Evaluator(*args)
            return
        import ray

        from pipeline.executors.session import connect

        # joins a cluster (address, RAY_ADDRESS) or starts a local session sized for the workers
        self.session = connect(address, num_cpus=max(self.workers, 1))
        env = {"env_vars": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
        actor = ray.remote(num_cpus=1, runtime_env=env)(Evaluator)
        e_ref, c_ref = ray.put(errors), ray.put(commands)
        self.actors = [actor.remote(args[0], e_ref, c_ref, *args[3:]) for _ in range(self.workers)]

    def map(self, genomes: list[np.ndarray]) -> list[tuple[float, list]]:
        if self.workers == 0:
            return self.local.evaluate(genomes)
        import ray

        chunks = np.array_split(np.arange(len(genomes)), len(self.actors))
        futures = [a.evaluate.remote([genomes[i] for i in idx]) for a, idx in zip(self.actors, chunks) if len(idx)]
        return [r for part in ray.get(futures) for r in part]

    def close(self) -> None:
        if self.workers:
            import ray

            from pipeline.executors.session import disconnect

            for a in self.actors:
                ray.kill(a)
            disconnect(self.session)


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(pickle.dumps(state))
    os.replace(tmp, path)


def evolve(cfg: EvolveConfig, resume: bool = True, progress: bool = True, address: str | None = None) -> dict:
    """Run (or resume) CMA-ES; write the best model to `cfg.out`; return a report."""
    import cma

    from operators.control.fit import build, evaluate
    from operators.control.sim import pid_traces
    from operators.control.snn import Layout

    layout = Layout(**cfg.layout.model_dump())
    n_genes = layout.size + (2 * layout.hidden_size if cfg.readout == "evolve" else 0)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    state = None
    if resume and ckpt is not None and ckpt.exists():
        try:
            state = pickle.loads(ckpt.read_bytes())
        except Exception as exc:
            raise DataError(f"checkpoint '{ckpt}' is unreadable ({exc}); delete it or pass --fresh") from None
        if state.get("config") != cfg.model_dump(exclude={"cma": {"generations"}, "time_limit_s": True, "workers": True}):
            raise DataError(f"checkpoint '{ckpt}' was written for a different config; pass --fresh to start over")
    d = cfg.data
    errors, commands = pid_traces(d.trajectories, d.duration_s, seed=d.seed, dt_s=layout.dt_s, model=d.plant)
    if state is None:
        from operators.control.snn import initial_genome

        x0 = np.concatenate([initial_genome(layout), np.zeros(n_genes - layout.size)])
        if cfg.init:
            from operators.control.snn import SNNModel

            genome = SNNModel.load(cfg.init).meta.get("genome")
            if genome is None or len(genome) != n_genes:
                raise DataError(f"init model '{cfg.init}' carries no genome of {n_genes} genes in meta.genome")
            x0 = np.asarray(genome, dtype=np.float64)
        es = cma.CMAEvolutionStrategy(
            x0, cfg.cma.sigma0,
            {"popsize": cfg.cma.popsize, "seed": cfg.cma.seed, "verbose": -9},
        )
        state = {"es": es, "generation": 0, "best": (np.inf, None, None), "history": [], "evaluations": 0,
                 "config": cfg.model_dump(exclude={"cma": {"generations"}, "time_limit_s": True, "workers": True})}
    es = state["es"]
    start_gen = state["generation"]
    closed = None
    if d.closed_loop and cfg.readout == "lstsq":
        from operators.control.fit import scenarios

        closed = scenarios(d.closed_loop, d.duration_s, d.seed + 5_000, layout.dt_s, d.plant)
    pool = Pool(cfg, errors, commands, closed, address=address)
    t0 = time.perf_counter()
    stopped = "generations"
    bar = None
    try:
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(TextColumn("[bold]evolve[/]"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("best {task.fields[best]:.4f}"), TextColumn("{task.fields[rate]:.0f} eval/s"),
                           TimeElapsedColumn())
            bar.start()
            task = bar.add_task("gen", total=cfg.cma.generations, completed=start_gen, best=state["best"][0], rate=0.0)
        for gen in range(start_gen, cfg.cma.generations):
            g0 = time.perf_counter()
            genomes = es.ask()
            results = pool.map(genomes)
            losses = [r[0] for r in results]
            es.tell(genomes, losses)
            state["evaluations"] += len(genomes)
            i = int(np.argmin(losses))
            if losses[i] < state["best"][0]:
                state["best"] = (losses[i], np.asarray(genomes[i]), np.asarray(results[i][1]))
            state["generation"] = gen + 1
            rate = len(genomes) / max(time.perf_counter() - g0, 1e-9)
            state["history"].append({"generation": gen + 1, "best": float(min(losses)), "mean": float(np.mean(losses)), "evals_per_s": rate})
            if bar is not None:
                bar.update(task, completed=gen + 1, best=state["best"][0], rate=rate)
            if ckpt is not None and (gen + 1) % cfg.checkpoint_every == 0:
                _save_checkpoint(ckpt, state)
            if cfg.time_limit_s is not None and time.perf_counter() - t0 > cfg.time_limit_s:
                stopped = "time_limit"
                break
    finally:
        if bar is not None:
            bar.stop()
        pool.close()
    if ckpt is not None:
        _save_checkpoint(ckpt, state)
    loss, genome, w_out = state["best"]
    report = {"generations": state["generation"], "evaluations": state["evaluations"], "train_loss": float(loss),
              "wall_s": round(time.perf_counter() - t0, 2), "stopped": stopped, "out": cfg.out,
              "neurons": 2 * (2 * layout.pairs + layout.hidden_size + 1)}
    if genome is not None:
        if d.validation:
            ve, vc = pid_traces(d.validation, d.duration_s, seed=d.seed + 10_000, dt_s=layout.dt_s, model=d.plant)
            g = genome if cfg.readout == "lstsq" else np.concatenate([genome[: layout.size], w_out])
            if cfg.readout == "lstsq":
                from operators.control.fit import features, loss_of

                model = build(genome, layout, w_out)
                u = features(model, ve).reshape(-1, 2 * layout.hidden_size) @ w_out
                report["validation_loss"] = loss_of(u, vc.ravel())
            else:
                report["validation_loss"] = evaluate(g, layout, ve, vc, "evolve")[0]
        model = build(genome, layout, w_out, meta={k: report[k] for k in ("generations", "evaluations", "train_loss")}
                      | {"validation_loss": report.get("validation_loss"), "config": cfg.model_dump(),
                         "genome": np.asarray(genome).tolist()})
        model.save(cfg.out)
    return report


# --- CLI --------------------------------------------------------------------------------


def _cmd_evolve(args) -> int:
    from rich.console import Console

    overrides = list(args.set or [])
    if args.generations is not None:
        overrides.append(f"cma.generations={args.generations}")
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    if args.out is not None:
        overrides.append(f"out={args.out}")
    cfg = load_config(args.config, overrides)
    report = evolve(cfg, resume=not args.fresh, progress=not args.quiet, address=args.address)
    Console().print_json(json.dumps(report, default=float))
    return 0


def register(subparsers) -> None:
    """Add `reflexarc evolve CONFIG` to the CLI."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "evolve", help="evolve the spiking blimp controller to mimic PID (CMA-ES on Ray)"
    )
    p.add_argument("config", help="YAML file with an 'evolve:' mapping (configs/blimp_evolve.yaml)")
    p.add_argument("--generations", type=int, help="override cma.generations")
    p.add_argument("--workers", type=int, help="Ray actors (0 = in-process)")
    p.add_argument("--address", help="join this running Ray cluster (HOST:PORT or auto; default RAY_ADDRESS, "
                   "else a local session starts)")
    p.add_argument("--out", help="where to write the evolved model JSON")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field of 'evolve:'")
    p.set_defaults(func=_cmd_evolve)
