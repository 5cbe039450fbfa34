"""brainsim against Brian2 (runtime and C++ standalone), Brunel strong scaling, memory per synapse.

    .venv/bin/python benchmarks/bench_brainsim.py [--quick] [--skip-brian2] [--skip-scaling]
        [--skip-memory] [--reps 3] [--out benchmarks/results/brainsim.json]

1. CUBA (Vogels & Abbott 2005; Brette et al. 2007 Benchmark 2; 4,000 neurons, 2 %), 10 s
   of biological time at dt = 0.1 ms: ours (one partition, Numba warmed up) against
   Brian2 2.9 in runtime mode (Cython) and in C++ standalone mode, each driven in its own
   virtualenv (`.venv-brian2`, created here when absent: Brian2 needs numpy < 2.3), with
   the rates and CV ISI each reports, so the same network is compared as well as timed.
   Then the built Brian2 binary is run again `--reps` times, alternating with ours, and
   each pair's CPU and wall times are compared as ratios (the machine is shared; a pair
   runs under the same load).
2. COBA (Benchmark 1), 10 s: ours against Brian2 C++ standalone, rates and CV ISI.
3. Brunel (2000) AI at 10^5 neurons (in-degree 1,000 + 250): strong scaling 1 -> 2 Ray
   actors, parallel efficiency, per-window exchange cost.
4. Memory: bytes per synapse measured, a 10^6-neuron / 10^8-synapse network built and
   run briefly, and the largest network that fits in 24 GiB extrapolated from measured
   bytes per synapse and per neuron.

Load averages are recorded with each measurement. Writes benchmarks/results/brainsim.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BRIAN_VENV = ROOT / ".venv-brian2"
RESULT = ROOT / "benchmarks" / "results" / "brainsim.json"

BRIAN_SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    mode, network, duration_s, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    delay_ms = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0  # 0: Brian's examples (same-step delivery)
    net_seed = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    from brian2 import *
    if mode == "cpp_standalone":
        set_device("cpp_standalone", directory=sys.argv[5], build_on_run=True)
    else:
        prefs.codegen.target = "cython"
    defaultclock.dt = 0.1 * ms
    seed(net_seed)
    taum, taue, taui = 20 * ms, 5 * ms, 10 * ms
    Vt, Vr = -50 * mV, -60 * mV
    t0 = time.perf_counter()
    if network == "cuba":  # Brette et al. (2007) Benchmark 2, as in Brian2's CUBA example
        El = -49 * mV
        eqs = """dv/dt = (ge + gi - (v - El)) / taum : volt (unless refractory)
        dge/dt = -ge / taue : volt
        dgi/dt = -gi / taui : volt"""
        P = NeuronGroup(4000, eqs, threshold="v > Vt", reset="v = Vr", refractory=5 * ms, method="exact")
        P.v = "Vr + rand() * (Vt - Vr)"
        we, wi = (60 * 0.27 / 10) * mV, (-20 * 4.5 / 10) * mV
    else:  # Benchmark 1 (COBA): conductances in units of the leak, started as in the benchmark scripts
        El, Ee, Ei = -60 * mV, 0 * mV, -80 * mV
        eqs = """dv/dt = (ge * (Ee - v) + gi * (Ei - v) - (v - El)) / taum : volt (unless refractory)
        dge/dt = -ge / taue : 1
        dgi/dt = -gi / taui : 1"""
        P = NeuronGroup(4000, eqs, threshold="v > Vt", reset="v = Vr", refractory=5 * ms,
                        method="exponential_euler")
        P.v = "El + (randn() * 5 - 5) * mV"
        P.ge = "randn() * 1.5 + 4"
        P.gi = "randn() * 12 + 20"
        we, wi = 0.6, 6.7
    Ce = Synapses(P, P, on_pre="ge += we", delay=delay_ms * ms)
    Ci = Synapses(P, P, on_pre="gi += wi", delay=delay_ms * ms)
    Ce.connect("i < 3200", p=0.02)
    Ci.connect("i >= 3200", p=0.02)
    mon = SpikeMonitor(P)
    import resource
    t1, c1 = time.perf_counter(), time.process_time()
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    run(duration_s * second)
    t2, c2 = time.perf_counter(), time.process_time()
    ch2 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = {"mode": mode, "network": network, "duration_s": duration_s, "delay_ms": delay_ms, "seed": net_seed,
           "setup_s": t1 - t0,
           "run_call_s": t2 - t1, "run_call_cpu_s": c2 - c1,
           "children_cpu_s": (ch2.ru_utime + ch2.ru_stime) - (ch1.ru_utime + ch1.ru_stime)}
    if mode == "cpp_standalone":
        res["sim_s"] = float(device._last_run_time)
    i = np.asarray(mon.i[:])
    t = np.asarray(mon.t[:] / second)
    keep = t >= 0.1  # the same transient and statistics as cluster.brainsim.report
    for name, lo, hi in (("e", 0, 3200), ("i", 3200, 4000)):
        sel = keep & (i >= lo) & (i < hi)
        res[f"rate_{name}_hz"] = float(sel.sum() / (hi - lo) / (duration_s - 0.1))
        order = np.lexsort((t[sel], i[sel]))
        n_s, t_s = i[sel][order], t[sel][order]
        same = n_s[1:] == n_s[:-1]
        isi, owner = np.diff(t_s)[same], n_s[1:][same]
        cnt = np.bincount(owner, minlength=hi)
        s1, s2 = np.bincount(owner, isi, minlength=hi), np.bincount(owner, isi * isi, minlength=hi)
        ok = cnt >= 2
        mean = s1[ok] / cnt[ok]
        res[f"cv_isi_{name}"] = float(np.mean(np.sqrt(np.maximum(s2[ok] / cnt[ok] - mean**2, 0)) / mean))
    res["synapses"] = int(len(Ce) + len(Ci))
    json.dump(res, open(out, "w"))
''')


def ensure_brian_venv() -> Path | None:
    py = BRIAN_VENV / "bin" / "python"
    if not py.exists():
        try:
            subprocess.run(["python3.11", "-m", "venv", str(BRIAN_VENV)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "brian2==2.9.*", "numpy<2.3"], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"cannot set up Brian2: {exc}")
            return None
    return py


def brian2(py: Path, mode: str, duration_s: float, workdir: Path, network: str = "cuba", delay_ms: float = 0.0,
           seed: int = 1) -> dict:
    """One Brian2 run in its virtualenv; `delay_ms` 0 is Brian's examples (a spike reaches its
    targets' conductances in the step it is emitted), 0.1 is our (and NEST's) shortest delay."""
    script = workdir / "brian_net.py"
    script.write_text(BRIAN_SCRIPT)
    tag = f"{network}_d{delay_ms:g}_s{seed}"
    out = workdir / f"brian_{tag}_{mode}.json"
    cmd = [str(py), str(script), mode, network, str(duration_s), str(out), str(workdir / f"standalone_{tag}"),
           str(delay_ms), str(seed)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"mode": mode, "error": proc.stderr.strip().splitlines()[-5:]}
    res = json.loads(out.read_text())
    res["process_wall_s"] = wall
    return res


def brian2_binary(folder: Path) -> dict:
    """Run a built Brian2 standalone binary again: its CPU time (this child's rusage:
    synapse creation, the run, writing results), its wall time, and the run time it
    measures itself (`results/last_run_info.txt`: `std::clock()`, so CPU time)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(["./main"], cwd=folder, check=True, capture_output=True, timeout=600)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_s = float((folder / "results" / "last_run_info.txt").read_text().split()[0])
    return {"process_cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), "process_wall_s": wall,
            "run_s": run_s}


def interleaved(folder: Path, duration_s: float, reps: int) -> dict:
    """Ours and the Brian2 C++ binary on CUBA, alternately, `reps` times each.

    Ours runs through `simulate()` (the CLI's path). Pairs: our run CPU against the
    binary's own run time (CPU: Brian2 times it with `std::clock()`), our build + run CPU
    against the binary's whole-process CPU, and our build + run wall against the
    binary's process wall (both include building the synapses).
    """
    from cluster.brainsim.simulate import simulate
    from cluster.brainsim.spec import NetworkSpec

    rows = []
    for _ in range(reps):
        load = os.getloadavg()[0]
        c0, t0 = time.process_time(), time.perf_counter()
        rep = simulate(NetworkSpec(model="vogels_abbott_cuba"), duration_s)
        ours = {"wall_s": rep["wall_s"], "cpu_s": rep["cpu_s"], "build_s": rep["build_s"],
                "build_and_run_cpu_s": time.process_time() - c0, "build_and_run_wall_s": time.perf_counter() - t0,
                "rate_e_hz": rep["populations"]["E"]["rate_hz"]}
        theirs = brian2_binary(folder)
        rows.append({"loadavg_1min": load, "ours": ours, "brian2_cpp_standalone": theirs,
                     "speedup_cpu_run": theirs["run_s"] / ours["cpu_s"],
                     "speedup_wall_process": theirs["process_wall_s"] / ours["build_and_run_wall_s"],
                     "speedup_cpu_process": theirs["process_cpu_s"] / ours["build_and_run_cpu_s"]})

    def med(key):
        return float(statistics.median(r[key] for r in rows))

    return {"reps": rows, "median_speedup_cpu_run": med("speedup_cpu_run"),
            "median_speedup_wall_process": med("speedup_wall_process"),
            "median_speedup_cpu_process": med("speedup_cpu_process"),
            "note": "speed-up > 1: ours faster; each pair ran back to back under the same load"}


def ours_net(model: str, duration_s: float) -> dict:
    from cluster.brainsim.simulate import simulate
    from cluster.brainsim.spec import NetworkSpec

    simulate(NetworkSpec(model=model), 0.05)  # warm up: Numba compiles (or loads its cache)
    load = os.getloadavg()[0]
    rep = simulate(NetworkSpec(model=model), duration_s)
    pops = rep["populations"]
    return {"wall_s": rep["wall_s"], "cpu_s": rep["cpu_s"], "build_s": rep["build_s"], "synapses": rep["synapses"],
            "bytes_per_synapse": rep["bytes_per_synapse"], "real_time_factor": rep["real_time_factor"],
            "rate_e_hz": pops["E"]["rate_hz"], "rate_i_hz": pops["I"]["rate_hz"],
            "cv_isi_e": pops["E"]["cv_isi"], "cv_isi_i": pops["I"]["cv_isi"], "chi_e": pops["E"]["chi"],
            "loadavg_1min": load}


def ratios(net: dict) -> dict:
    """Ours against Brian2: speed-ups (> 1: ours faster) and rate and CV ratios. On a shared
    machine wall times swing with the load, so CPU-time ratios are given too. Brian2
    standalone's own run time (`sim_s`) is CPU time (`std::clock()`); its wall time here
    includes code generation and compilation, so no wall ratio is given for it. The
    interleaved pairs (CUBA) are the fairer speed comparison: each pair ran under the
    same load."""
    ours = net["ours"]
    rt, sa = net.get("brian2_runtime", {}), net.get("brian2_cpp_standalone", {})
    out = {}
    if "run_call_s" in rt:
        out["speedup_vs_brian2_runtime_wall"] = rt["run_call_s"] / ours["wall_s"]
        out["speedup_vs_brian2_runtime_cpu"] = rt["run_call_cpu_s"] / ours["cpu_s"]
    ref = rt if "rate_e_hz" in rt else sa
    for key in ("rate_e_hz", "rate_i_hz", "cv_isi_e", "cv_isi_i"):
        if ref.get(key):
            out[f"{key}_ratio_vs_brian2"] = ours[key] / ref[key]
    if "sim_s" in sa:
        out["speedup_vs_brian2_cpp_standalone_cpu"] = sa["sim_s"] / ours["cpu_s"]
    return out


def brunel_scaling(scale: float, duration_s: float) -> dict:
    from cluster.brainsim.simulate import simulate
    from cluster.brainsim.spec import NetworkSpec

    spec = NetworkSpec(model="brunel2000", scale=scale, options={"state": "AI"})
    runs = {}
    for k in (1, 2):
        rep = simulate(spec, duration_s, actors=k, backend="ray", transient_ms=20.0)
        w = rep["windows"]
        runs[k] = {"wall_s": rep["wall_s"], "build_s": rep["build_s"], "actor_busy_s": rep["actor_busy_s"],
                   "windows": w, "window_ms": rep["window_ms"], "ms_per_window": 1e3 * rep["wall_s"] / w,
                   "exchange_ms_per_window": 1e3 * rep["exchange_s"] / w,
                   "spikes_per_window": rep["spikes_per_window"],
                   "bytes_per_window": rep["bytes_exchanged"] / w, "rate_e_hz": rep["populations"]["E"]["rate_hz"],
                   "neurons": rep["neurons"], "synapses": rep["synapses"],
                   "bytes_per_synapse": rep["bytes_per_synapse"]}
    speedup = runs[1]["wall_s"] / runs[2]["wall_s"]
    return {"scale": scale, "duration_s": duration_s, "runs": runs, "speedup": speedup,
            "parallel_efficiency": speedup / 2, "target_efficiency": 0.7}


def memory(n_neurons: int, indegree: int, duration_s: float) -> dict:
    """Build (and briefly run) a big Brunel network in this process; measure what it holds."""
    import numpy as np

    from cluster.brainsim.engine import Simulation
    from cluster.brainsim.spec import NetworkSpec

    scale = n_neurons / 12_500
    # keep J * C_E (the mean recurrent drive) as in the paper when the in-degree shrinks
    spec = NetworkSpec(model="brunel2000", scale=scale,
                       options={"state": "AI", "indegree_e": int(indegree * 0.8), "j_mv": 0.1 * 1000 / (indegree * 0.8)})
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sim = Simulation(spec).build()
    info = sim.info()
    part = sim.parts[0]
    neuron_bytes = sum(a.nbytes for a in (part.v, part.ge, part.gi, part.refr, part.rng, part.pidx, part.fired, part.buf))
    t0 = time.perf_counter()
    n_spikes = sum(len(s[0]) for s in sim.windows(duration_s))
    wall = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sim.close()
    per_neuron = neuron_bytes / info["neurons"]
    per_syn = (info["synapse_bytes"] - part.indptr.nbytes) / info["synapses"]
    budget = 24 * 2**30
    out = {"neurons": info["neurons"], "synapses": info["synapses"], "bytes_per_synapse": info["bytes_per_synapse"],
           "bytes_per_synapse_excl_rowptr": per_syn, "neuron_state_bytes_per_neuron": per_neuron,
           "build_s": info["build_s"], "run_s": wall, "duration_s": duration_s,
           "rate_hz": n_spikes / info["neurons"] / duration_s, "max_rss_mib_before": rss0, "max_rss_mib_after": rss1}
    for k in (100, 1250):
        per = per_neuron + 8 + k * per_syn  # + row pointer per neuron (one partition)
        out[f"max_neurons_24gib_indegree_{k}"] = int(budget / per)
        out[f"max_synapses_24gib_indegree_{k}"] = int(budget / per) * k
    del np
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (1 s CUBA, small Brunel)")
    ap.add_argument("--skip-brian2", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="interleaved pairs of ours and the Brian2 binary (CUBA)")
    ap.add_argument("--out", default=str(RESULT), help="where to write the JSON")
    args = ap.parse_args()
    duration = 1.0 if args.quick else 10.0
    result: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "note": "shared machine: other jobs compete for the 2 cores"},
                    "quick": args.quick, "loadavg_start": os.getloadavg()}
    for net, model in (("cuba", "vogels_abbott_cuba"), ("coba", "vogels_abbott_coba")):
        print(f"{net.upper()}, {duration:g} s: ours ...", flush=True)
        result[net] = {"duration_s": duration, "ours": ours_net(model, duration)}
        print(json.dumps(result[net]["ours"]), flush=True)
    if not args.skip_brian2:
        py = ensure_brian_venv()
        if py is not None:
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                brian2(py, "runtime", 0.1, work)  # warm the Cython cache
                for mode in ("runtime", "cpp_standalone"):
                    print(f"CUBA, {duration:g} s: Brian2 {mode} ...", flush=True)
                    res = brian2(py, mode, duration, work)
                    result["cuba"][f"brian2_{mode}"] = res
                    print(json.dumps(res), flush=True)
                result["cuba"].update(ratios(result["cuba"]))
                if "sim_s" in result["cuba"]["brian2_cpp_standalone"]:
                    print(f"CUBA, {duration:g} s: ours and the Brian2 binary, interleaved x{args.reps} ...", flush=True)
                    pairs = interleaved(work / "standalone_cuba_d0.1_s1", duration, args.reps)
                    result["cuba"]["interleaved_vs_brian2_cpp_standalone"] = pairs
                    print(json.dumps({k: v for k, v in pairs.items() if k != "reps"}), flush=True)
                print(f"COBA, {duration:g} s: Brian2 cpp_standalone ...", flush=True)
                result["coba"]["brian2_cpp_standalone"] = brian2(py, "cpp_standalone", duration, work, "coba")
                result["coba"].update(ratios(result["coba"]))
                print(json.dumps(result["coba"]["brian2_cpp_standalone"]), flush=True)
    if not args.skip_scaling:
        scale, dur = (0.8, 0.1) if args.quick else (8.0, 0.2)
        print(f"Brunel scale {scale} ({int(12500 * scale)} neurons), {dur} s, 1 -> 2 actors ...", flush=True)
        result["brunel_scaling"] = brunel_scaling(scale, dur)
        print(json.dumps({k: v for k, v in result["brunel_scaling"].items() if k != "runs"}), flush=True)
    if not args.skip_memory:
        n = 100_000 if args.quick else 1_000_000
        print(f"memory: {n} neurons, in-degree 100 ...", flush=True)
        result["memory"] = memory(n, 100, 0.01)
        print(json.dumps(result["memory"]), flush=True)
    result["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    if out.exists():  # a skipped section keeps its figures from the last run that measured it
        earlier = json.loads(out.read_text())
        for key in ("brunel_scaling", "memory"):
            if key not in result and key in earlier:
                result[key] = {**earlier[key], "carried_over_from_an_earlier_run": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
