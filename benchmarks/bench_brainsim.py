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

5. Exchange cost per window on one node: two partitions of a 64-neuron network with a
   0.1 ms delay (one exchange per step) on the shared-memory board, as threads and as Ray
   actors, against one partition's time per step.
6. 1 vs 2 partitions (Ray actors on the board), interleaved: CUBA 10 s, Brunel AI 1 s.
7. NEST 3.10 (PyPI wheel, `benchmarks/.venv-nest`, created when absent) side by side: Brunel
   AI at full scale, 1 s, ours with 1 and 2 partitions against NEST with 1 and 2 threads,
   interleaved, build and simulation time apart, rates and CV ISI of both; and NEST's SONATA
   example (tests/data/sonata) run by us and by NEST built from the arrays we read.
8. The Potjans-Diesmann microcircuit at full scale on 2 Ray actors: wall per biological
   second, synaptic events per second per core, per-layer rates against the reference.
   `--only-cluster` runs sections 5-8 alone.

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
SONATA_EXAMPLE = ROOT / "tests" / "data" / "sonata" / "300_pointneurons" / "simulation_config.json"

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


NEST_SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    duration_s, out, delay_ms, net_seed = float(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    import nest
    nest.set_verbosity("M_WARNING")
    nest.ResetKernel()
    nest.SetKernelStatus({"resolution": 0.1, "rng_seed": net_seed, "local_num_threads": 1})
    # Benchmark 1 (COBA) in NEST's units: g_L = 10 nS, C_m = tau_m g_L = 200 pF; conductances
    # and weights are ours (units of g_L) times 10 nS; started as in the benchmark scripts
    params = {"C_m": 200.0, "g_L": 10.0, "E_L": -60.0, "V_th": -50.0, "V_reset": -60.0, "t_ref": 5.0,
              "E_ex": 0.0, "E_in": -80.0, "tau_syn_ex": 5.0, "tau_syn_in": 10.0, "I_e": 0.0}
    t0 = time.perf_counter()
    P = nest.Create("iaf_cond_exp", 4000, params=params)
    P.V_m = nest.random.normal(-65.0, 5.0)
    P.g_ex = nest.random.normal(40.0, 15.0)
    P.g_in = nest.random.normal(200.0, 120.0)
    conn = {"rule": "pairwise_bernoulli", "p": 0.02, "allow_autapses": True, "allow_multapses": True}
    nest.Connect(P[:3200], P, conn, {"synapse_model": "static_synapse", "weight": 6.0, "delay": delay_ms})
    nest.Connect(P[3200:], P, conn, {"synapse_model": "static_synapse", "weight": -67.0, "delay": delay_ms})
    rec = nest.Create("spike_recorder")
    nest.Connect(P, rec)
    t1, c1 = time.perf_counter(), time.process_time()
    nest.Simulate(duration_s * 1000.0)
    t2, c2 = time.perf_counter(), time.process_time()
    ev = rec.get("events")
    i = np.asarray(ev["senders"]) - P[0].global_id
    t = np.asarray(ev["times"]) / 1000.0
    res = {"simulator": "nest " + nest.__version__, "model": "iaf_cond_exp", "duration_s": duration_s,
           "delay_ms": delay_ms, "seed": net_seed, "setup_s": t1 - t0, "sim_s": t2 - t1, "sim_cpu_s": c2 - c1,
           "synapses": int(nest.GetKernelStatus("num_connections"))}
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
    json.dump(res, open(out, "w"))
''')
def nest_coba(py: Path, duration_s: float, workdir: Path, delay_ms: float = 0.1, seed: int = 1) -> dict:
    """Benchmark 1 (COBA) with NEST's iaf_cond_exp (GSL RKF45, adaptive) in NEST's virtualenv."""
    script = workdir / "nest_coba.py"
    script.write_text(NEST_SCRIPT)
    out = workdir / f"nest_coba_d{delay_ms:g}_s{seed}.json"
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), str(script), str(duration_s), str(out), str(delay_ms), str(seed)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"simulator": "nest", "error": proc.stderr.strip().splitlines()[-5:]}
    res = json.loads(out.read_text())
    res["process_wall_s"] = time.perf_counter() - t0
    return res


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


NEST_PY = ROOT / "benchmarks" / ".venv-nest" / "bin" / "python"


def nest_python() -> Path | None:
    """NEST 3.10 from PyPI in its own virtualenv (benchmarks/.venv-nest, numpy < 2.3), created when absent."""
    if not NEST_PY.exists():
        try:
            subprocess.run(["python3.11", "-m", "venv", str(NEST_PY.parents[1])], check=True)
            subprocess.run([str(NEST_PY), "-m", "pip", "install", "-q", "nest-simulator==3.10.*", "numpy<2.3"],
                           check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"cannot set up NEST: {exc}")
            return None
    return NEST_PY


NEST_BRUNEL_SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    threads, duration_s, out, scale = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    import nest
    nest.set_verbosity("M_WARNING")
    nest.ResetKernel()
    nest.SetKernelStatus({"resolution": 0.1, "rng_seed": 1, "local_num_threads": threads})
    # Brunel (2000) model A, AI: g = 5, eta = 2, J = 0.1 mV, D = 1.5 ms, C_E = 1000, C_I = 250, theta = 20 mV,
    # V_reset = 10 mV (NEST's brunel_delta_nest.py has 0), tau_m = 20 ms, t_ref = 2 ms, no autapses, v0 ~ U(0, 20)
    g, eta, J, D, CE, CI = 5.0, 2.0, 0.1, 1.5, 1000, 250
    NE, NI = round(10000 * scale), round(2500 * scale)
    tau, theta = 20.0, 20.0
    p_rate = 1000.0 * eta * theta / (J * CE * tau) * CE
    t0 = time.perf_counter()
    nodes = nest.Create("iaf_psc_delta", NE + NI, params={"C_m": 1.0, "tau_m": tau, "t_ref": 2.0, "E_L": 0.0,
                                                          "V_reset": 10.0, "V_th": theta})
    nodes.V_m = nest.random.uniform(0.0, theta)
    noise = nest.Create("poisson_generator", params={"rate": p_rate})
    rec = nest.Create("spike_recorder")
    nest.Connect(noise, nodes, syn_spec={"weight": J, "delay": D})
    nest.Connect(nodes, rec)
    conn = lambda c: {"rule": "fixed_indegree", "indegree": c, "allow_autapses": False, "allow_multapses": True}
    nest.Connect(nodes[:NE], nodes, conn(CE), {"weight": J, "delay": D})
    nest.Connect(nodes[NE:], nodes, conn(CI), {"weight": -g * J, "delay": D})
    nest.Prepare()
    t1 = time.perf_counter()
    nest.Run(duration_s * 1000.0)
    t2 = time.perf_counter()
    nest.Cleanup()
    ev = rec.get("events")
    np.savez(out + ".npz", t_ms=np.asarray(ev["times"], float), neuron=np.asarray(ev["senders"]) - nodes[0].global_id)
    json.dump({"simulator": "nest " + nest.__version__, "threads": threads, "build_s": t1 - t0, "sim_s": t2 - t1,
               "synapses": int(nest.GetKernelStatus("num_connections")) - 2 * (NE + NI), "n_e": NE, "n_i": NI},
              open(out, "w"))
''')


def _pop_stats(t_ms, neuron, sizes: dict, duration_s: float, transient_ms: float) -> dict:
    """Rate and CV ISI per population (E first, then I) with our report's statistics."""
    import numpy as np

    from cluster.brainsim.report import population_stats

    out, lo = {}, 0
    for name, n in sizes.items():
        sel = (neuron >= lo) & (neuron < lo + n)
        s = population_stats(t_ms[sel], neuron[sel] - lo, n, duration_s * 1e3, transient_ms)
        out[name] = {"rate_hz": s["rate_hz"], "cv_isi": s["cv_isi"]}
        lo += n
    del np
    return out


def nest_brunel(py: Path, threads: int, duration_s: float, workdir: Path, scale: float = 1.0) -> dict:
    """Brunel AI in NEST (iaf_psc_delta) with `threads` threads: build and simulation time, rates, CV ISI."""
    import numpy as np

    script = workdir / "nest_brunel.py"
    script.write_text(NEST_BRUNEL_SCRIPT)
    out = workdir / f"nest_brunel_{threads}.json"
    proc = subprocess.run([str(py), str(script), str(threads), str(duration_s), str(out), str(scale)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-5:]}
    res = json.loads(out.read_text())
    sp = np.load(str(out) + ".npz")
    res["populations"] = _pop_stats(sp["t_ms"], sp["neuron"], {"E": res["n_e"], "I": res["n_i"]}, duration_s, 100.0)
    return res


def ours_brunel(actors: int, duration_s: float, scale: float = 1.0) -> dict:
    """Brunel AI here: one partition in this process, more as Ray actors on the shared-memory board."""
    from cluster.brainsim.simulate import simulate
    from cluster.brainsim.spec import NetworkSpec

    spec = NetworkSpec(model="brunel2000", scale=scale, options={"state": "AI"})
    rep = simulate(spec, duration_s, actors=actors, backend="inline" if actors == 1 else "ray")
    return {"build_s": rep["build_s"], "sim_s": rep["wall_s"], "synapses": rep["synapses"],
            "backend": rep["backend"], "windows": rep["windows"], "actor_busy_s": rep["actor_busy_s"],
            "partition_wait_s": rep["partition_wait_s"], "wait_us_per_window": rep["wait_us_per_window"],
            "populations": {k: {"rate_hz": v["rate_hz"], "cv_isi": v["cv_isi"]} for k, v in rep["populations"].items()}}


def brunel_vs_nest(py: Path, duration_s: float, reps: int, scale: float = 1.0) -> dict:
    """Ours with 1 and 2 partitions against NEST with 1 and 2 threads, interleaved `reps` times.

    Each rep runs ours(1), NEST(1), ours(2), NEST(2) back to back, so each pair sees the
    same load. Speed-ups > 1: ours faster. Simulation time is NEST's `Run` against our
    run loop's wall time; build is NEST's Create + Connect + Prepare against ours.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(reps):
            row = {}
            for k in (1, 2):
                load = os.getloadavg()[0]
                ours = ours_brunel(k, duration_s, scale)
                nest = nest_brunel(py, k, duration_s, Path(tmp), scale)
                pair = {"loadavg_1min": load, "ours": ours, "nest": nest}
                if "sim_s" in nest:
                    pair["speedup_sim"] = nest["sim_s"] / ours["sim_s"]
                    pair["speedup_build"] = nest["build_s"] / ours["build_s"]
                    pair["speedup_build_and_sim"] = (nest["sim_s"] + nest["build_s"]) / (ours["sim_s"] + ours["build_s"])
                    for pop in ("E", "I"):
                        pair[f"rate_{pop}_ratio_vs_nest"] = ours["populations"][pop]["rate_hz"] / nest["populations"][pop]["rate_hz"]
                        pair[f"cv_isi_{pop}_ratio_vs_nest"] = ours["populations"][pop]["cv_isi"] / nest["populations"][pop]["cv_isi"]
                row[f"workers_{k}"] = pair
                print(json.dumps({f"workers_{k}": {key: v for key, v in pair.items() if key not in ("ours", "nest")}}), flush=True)
            row["ours_speedup_1_to_2_partitions"] = row["workers_1"]["ours"]["sim_s"] / row["workers_2"]["ours"]["sim_s"]
            if "sim_s" in row["workers_2"]["nest"]:
                row["nest_speedup_1_to_2_threads"] = row["workers_1"]["nest"]["sim_s"] / row["workers_2"]["nest"]["sim_s"]
            rows.append(row)

    def med(key, sub=None):
        vals = [r[sub][key] if sub else r[key] for r in rows if key in (r[sub] if sub else r)]
        return float(statistics.median(vals)) if vals else None

    return {"network": "brunel2000 AI", "scale": scale, "duration_s": duration_s, "reps": rows,
            "median_speedup_sim_1_worker": med("speedup_sim", "workers_1"),
            "median_speedup_sim_2_workers": med("speedup_sim", "workers_2"),
            "median_ours_speedup_1_to_2_partitions": med("ours_speedup_1_to_2_partitions"),
            "median_nest_speedup_1_to_2_threads": med("nest_speedup_1_to_2_threads"),
            "targets": {"speedup_sim_vs_nest": 3.0, "ours_speedup_1_to_2": 1.5, "rate_ratio_within": 0.05}}


def _exchange_network():
    """64 delta LIFs with a 0.1 ms delay: one window per step and almost nothing but exchange."""
    from cluster.brainsim.spec import External, NetworkSpec, Population, Projection

    return NetworkSpec(populations=[Population(name="P", size=64, model="lif_delta", v_rest_mv=0.0, v_reset_mv=0.0,
                                               v_thresh_mv=10.0, external=External(rate_hz=5000.0, weight=1.0))],
                       projections=[Projection(pre="P", post="P", p=0.1, weight=0.5, delay_ms=0.1)])


def _timed_windows(sim, warm: int, windows: int, per_chunk: int) -> tuple[float, float]:
    """Run `warm` windows, then time `windows` more (0.1 ms each); returns (load average, wall s)."""
    list(sim.chunks(warm * 1e-4, warm))
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    for _c in sim.chunks(windows * 1e-4, per_chunk):
        pass
    return load, time.perf_counter() - t0


def exchange_cost(windows: int = 50_000) -> dict:
    """Wall per window of two partitions that do almost nothing but exchange (64 neurons,
    delay = dt: one window per step), on the board as threads and as Ray actors, against
    one partition's wall per step on the same network: the difference is the exchange."""
    from cluster.brainsim.engine import Simulation

    spec = _exchange_network()
    out = {"neurons": 64, "windows": windows, "runs": []}
    for _ in range(3):
        for backend, k in (("inline", 1), ("threads", 2), ("ray", 2)):
            sim = Simulation(spec, actors=k, backend=backend).build()
            load, wall = _timed_windows(sim, 2000, windows, 10_000)
            waits = [t["wait_s"] for t in sim.partition_times()]
            sim.close()
            out["runs"].append({"backend": backend, "partitions": k, "us_per_window": 1e6 * wall / windows,
                                "wait_us_per_window": 1e6 * statistics.mean(waits) / windows if waits else 0.0,
                                "loadavg_1min": load})
            print(json.dumps(out["runs"][-1]), flush=True)
    for backend in ("threads", "ray"):
        per = [r["us_per_window"] for r in out["runs"] if r["backend"] == backend]
        one = [r["us_per_window"] for r in out["runs"] if r["backend"] == "inline"]
        out[f"{backend}_exchange_us_per_window_best"] = min(per) - min(one)
        out[f"{backend}_exchange_us_per_window_median"] = statistics.median(per) - statistics.median(one)
    out["target_us"] = 10.0
    return out


def exchange_cross_node(windows: int = 5_000) -> dict:
    """The same two partitions on two Ray nodes of one machine (ray.cluster_utils, via
    pipeline.testing.MultiNode): each window crosses the bridge (pipeline.netchan, TCP)."""
    import ray

    from cluster.brainsim.engine import Simulation
    from pipeline.testing import MultiNode

    spec = _exchange_network()
    nodes = MultiNode()
    ray.init(address=nodes.address, include_dashboard=False, log_to_driver=False)
    runs = []
    try:
        for _ in range(3):
            sim = Simulation(spec, actors=2, backend="ray").build()
            load, wall = _timed_windows(sim, 500, windows, 1000)
            runs.append({"nodes": sim.info()["nodes"], "us_per_window": 1e6 * wall / windows, "loadavg_1min": load})
            sim.close()
            print(json.dumps(runs[-1]), flush=True)
    finally:
        ray.shutdown()
        nodes.shutdown()
    return {"windows": windows, "runs": runs,
            "median_us_per_window": float(statistics.median(r["us_per_window"] for r in runs))}


def partitions_1_vs_2(model: str, duration_s: float, reps: int = 2) -> dict:
    """Wall of 1 partition (this process) against 2 Ray actors on the board, interleaved."""
    from cluster.brainsim.simulate import simulate
    from cluster.brainsim.spec import NetworkSpec

    spec = NetworkSpec(model=model, options={"state": "AI"} if model == "brunel2000" else {})
    rows = []
    for _ in range(reps):
        row = {}
        for k in (1, 2):
            load = os.getloadavg()[0]
            rep = simulate(spec, duration_s, actors=k, backend="inline" if k == 1 else "ray")
            row[k] = {"wall_s": rep["wall_s"], "build_s": rep["build_s"], "windows": rep["windows"],
                      "actor_busy_s": rep["actor_busy_s"], "partition_wait_s": rep["partition_wait_s"],
                      "wait_us_per_window": rep["wait_us_per_window"], "loadavg_1min": load,
                      "rate_e_hz": rep["populations"]["E"]["rate_hz"]}
        row["wall_2_over_1"] = row[2]["wall_s"] / row[1]["wall_s"]
        rows.append(row)
        print(json.dumps({"model": model, "wall_1": row[1]["wall_s"], "wall_2": row[2]["wall_s"],
                          "load": row[1]["loadavg_1min"]}), flush=True)
    return {"model": model, "duration_s": duration_s, "reps": rows,
            "median_wall_2_over_1": float(statistics.median(r["wall_2_over_1"] for r in rows))}


NEST_SONATA_SCRIPT = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    arrays, meta_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
    import nest
    nest.set_verbosity("M_WARNING")
    nest.ResetKernel()
    meta = json.load(open(meta_file))
    a = np.load(arrays)
    nest.SetKernelStatus({"resolution": meta["dt_ms"], "rng_seed": 1, "local_num_threads": 1})
    t0 = time.perf_counter()
    gids = []  # NEST ids of our global neurons, group by group
    for g in meta["groups"]:
        if g["kind"] == "virtual":
            nodes = nest.Create("spike_generator", g["size"], params={"allow_offgrid_times": True})
            t, n = a[g["name"] + ".t"], a[g["name"] + ".n"]
            for i in range(g["size"]):
                nodes[i].spike_times = np.sort(t[n == i]).tolist()
        else:
            nodes = nest.Create("iaf_psc_alpha", g["size"], params=g["params"])
        gids.append(np.asarray(nodes.tolist()))
    gid = np.concatenate(gids)
    rec = nest.Create("spike_recorder")
    nest.Connect(nest.NodeCollection(sorted(gid.tolist())), rec)
    src, tgt, w, d = a["src"], a["tgt"], a["w"], a["d"]
    nest.Connect(gid[src], gid[tgt], "one_to_one", {"weight": w, "delay": d})
    t1 = time.perf_counter()
    nest.Simulate(meta["duration_ms"])
    t2 = time.perf_counter()
    ev = rec.get("events")
    inv = {int(x): i for i, x in enumerate(gid)}
    neuron = np.array([inv[int(s)] for s in ev["senders"]], np.int64)
    np.savez(out + ".npz", t_ms=np.asarray(ev["times"], float), neuron=neuron)
    json.dump({"simulator": "nest " + nest.__version__, "build_s": t1 - t0, "sim_s": t2 - t1,
               "connections": len(src)}, open(out, "w"))
''')


def sonata_vs_nest(py: Path, config: Path, workdir: Path) -> dict:
    """The SONATA example read by us, run here and in NEST (built from the arrays we read), per-population rates."""
    import numpy as np

    from cluster.brainsim import sonata
    from cluster.brainsim.partition import compile_network
    from cluster.brainsim.simulate import simulate

    circuit = sonata.read(config)
    spec, duration_s = circuit.spec, circuit.duration_s
    layout = compile_network(spec)
    arrays, groups = {}, []
    for g in circuit.groups:
        p = g.population
        if p.model == "spike_source":
            groups.append({"name": g.name, "kind": "virtual", "size": p.size})
            arrays[g.name + ".t"] = np.asarray(p.spike_times_ms, float)
            arrays[g.name + ".n"] = np.asarray(p.spike_neurons, np.int64)
        else:
            groups.append({"name": g.name, "kind": "neuron", "size": p.size, "params": {
                "C_m": p.c_m_pf, "tau_m": p.tau_m_ms, "t_ref": p.t_ref_ms, "E_L": p.v_rest_mv, "V_th": p.v_thresh_mv,
                "V_reset": p.v_reset_mv, "I_e": p.i_e_pa, "tau_syn_ex": p.tau_syn_e_ms, "tau_syn_in": p.tau_syn_i_ms,
                "V_m": p.v_init_mv[0]}})
    e = layout.edges
    arrays.update(src=e[0].astype(np.int64), tgt=e[1].astype(np.int64), w=e[2], d=e[3])
    np.savez(workdir / "sonata_arrays.npz", **arrays)
    (workdir / "sonata_meta.json").write_text(json.dumps({"dt_ms": spec.dt_ms, "duration_ms": duration_s * 1e3,
                                                          "groups": groups}))
    script = workdir / "nest_sonata.py"
    script.write_text(NEST_SONATA_SCRIPT)
    out = workdir / "nest_sonata.json"
    load = os.getloadavg()[0]
    proc = subprocess.run([str(py), str(script), str(workdir / "sonata_arrays.npz"), str(workdir / "sonata_meta.json"),
                           str(out)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-5:]}
    nest = json.loads(out.read_text())
    sp = np.load(str(out) + ".npz")
    rep = simulate(spec, duration_s)
    sizes = {g.name: len(g.node_ids) for g in circuit.groups}
    theirs = _pop_stats(sp["t_ms"], sp["neuron"], sizes, duration_s, 100.0)
    rows = {}
    for name in sizes:
        ours_r, nest_r = rep["populations"][name]["rate_hz"], theirs[name]["rate_hz"]
        rows[name] = {"ours_hz": ours_r, "nest_hz": nest_r, "ratio": ours_r / nest_r if nest_r else None,
                      "ours_cv_isi": rep["populations"][name]["cv_isi"], "nest_cv_isi": theirs[name]["cv_isi"]}
    by_pop = {}
    for pop in dict.fromkeys(g.sonata_population for g in circuit.groups):
        names = [g.name for g in circuit.groups if g.sonata_population == pop]
        n = sum(sizes[x] for x in names)
        o = sum(rows[x]["ours_hz"] * sizes[x] for x in names) / n
        t = sum(rows[x]["nest_hz"] * sizes[x] for x in names) / n
        by_pop[pop] = {"ours_hz": o, "nest_hz": t, "ratio": o / t if t else None}
    return {"config": str(config.name), "neurons": rep["neurons"], "synapses": rep["synapses"], "dt_ms": spec.dt_ms,
            "duration_s": duration_s, "loadavg_1min": load, "ours": {"build_s": rep["build_s"], "sim_s": rep["wall_s"]},
            "nest": nest, "per_node_type": rows, "per_population": by_pop,
            "max_rate_deviation_per_population": max(abs(r["ratio"] - 1) for r in by_pop.values() if r["ratio"]),
            "max_rate_deviation_per_node_type": max(abs(r["ratio"] - 1) for r in rows.values() if r["ratio"]),
            "target": 0.05}


# Per-population rates of the full-scale microcircuit with Poisson background (no DC, no
# thalamus): Romaro et al. (2021), Neural Comput. 33:1993, Table A.1 (NetPyNE at 100 %,
# reproducing Potjans & Diesmann 2014, Fig. 6; their NEST run gave 0.86, 4.45, 7.59 and
# 1.09 Hz for L2/3E, L4E, L5E, L6E).
PD_REFERENCE_HZ = {"L23E": 0.90, "L23I": 2.80, "L4E": 4.39, "L4I": 5.70, "L5E": 6.80, "L5I": 8.22, "L6E": 1.14,
                   "L6I": 7.60}
# NEST on the same model: Kurth et al. (2022), Neuromorph. Comput. Eng. 2:021001, ran it faster
# than real time on one compute node of 128 cores; the issue quotes a real-time factor of 0.67
# there, i.e. about 86 core-seconds per biological second.
NEST_MICROCIRCUIT = {"source": "Kurth et al. 2022, Neuromorph. Comput. Eng. 2:021001 (as quoted in issue #18)",
                     "cores": 128, "real_time_factor": 0.67, "core_s_per_bio_s": 0.67 * 128}


def microcircuit(duration_s: float, actors: int = 2, scale: float = 1.0) -> dict:
    """Potjans & Diesmann (2014) at `scale` on `actors` Ray actors: build, wall per biological
    second, synaptic events per second per core, per-layer rates against the reference."""
    from cluster.brainsim.simulate import simulate
    from cluster.brainsim.spec import NetworkSpec

    load = os.getloadavg()[0]
    transient = min(200.0, duration_s * 500)
    rep = simulate(NetworkSpec(model="potjans_diesmann_2014", scale=scale), duration_s, actors=actors,
                   backend="ray" if actors > 1 else "inline", transient_ms=transient)
    pops = rep["populations"]
    spikes = sum(p["spikes"] for p in pops.values()) * duration_s * 1e3 / (duration_s * 1e3 - transient)
    events = spikes * rep["synapses"] / rep["neurons"]  # each spike reaches its out-degree (mean = in-degree)
    wall_per_bio_s = rep["wall_s"] / duration_s
    rates = {name: {"ours_hz": p["rate_hz"], "reference_hz": PD_REFERENCE_HZ[name],
                    "ratio": p["rate_hz"] / PD_REFERENCE_HZ[name], "cv_isi": p["cv_isi"]} for name, p in pops.items()}
    return {"scale": scale, "neurons": rep["neurons"], "synapses": rep["synapses"], "actors": actors,
            "duration_s": duration_s, "transient_ms": transient, "build_s": rep["build_s"], "wall_s": rep["wall_s"],
            "wall_s_per_bio_s": wall_per_bio_s, "target_wall_s_per_bio_s": 20.0,
            "core_s_per_bio_s": wall_per_bio_s * actors,
            "synaptic_events_per_s_per_core": events / duration_s / (wall_per_bio_s * actors),
            "actor_busy_s": rep["actor_busy_s"], "partition_wait_s": rep["partition_wait_s"],
            "bytes_per_synapse": rep["bytes_per_synapse"], "rates": rates, "reference": "Romaro et al. 2021, Table A.1",
            "nest_published": NEST_MICROCIRCUIT, "loadavg_1min": load}


COBA_KEYS = ("rate_e_hz", "rate_i_hz", "cv_isi_e", "cv_isi_i")


def _mean_sd(runs: list[dict], keys=COBA_KEYS) -> dict:
    out = {}
    for key in keys:
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            out[key] = float(statistics.fmean(vals))
            out[f"{key}_sd"] = float(statistics.stdev(vals)) if len(vals) > 1 else 0.0
    return out


def coba_zero_delay(py: Path, dur: float, work: Path, seeds: list[int]) -> dict:
    """COBA as Brian's example scripts have it, zero-delay synapses (a spike reaches its targets'
    conductances in the step it is emitted), in ours (`delay_ms: 0`) and Brian2 C++ standalone,
    over the same number of realisations; NEST has no zero delay (its shortest is one step)."""
    from cluster.brainsim.simulate import simulate
    from cluster.brainsim.spec import NetworkSpec

    ours = []
    for seed in seeds:
        load = os.getloadavg()[0]
        rep = simulate(NetworkSpec(model="vogels_abbott_coba", seed=seed, options={"delay_ms": 0.0}), dur)
        pops = rep["populations"]
        ours.append({"seed": seed, "cpu_s": rep["cpu_s"], "wall_s": rep["wall_s"], "loadavg_1min": load,
                     "rate_e_hz": pops["E"]["rate_hz"], "rate_i_hz": pops["I"]["rate_hz"],
                     "cv_isi_e": pops["E"]["cv_isi"], "cv_isi_i": pops["I"]["cv_isi"]})
        print(f"COBA ours, zero delay, seed {seed}: {json.dumps(ours[-1])}", flush=True)
    b = [brian2(py, "cpp_standalone", dur, work, "coba", 0.0, seed) for seed in seeds]
    for r in b:
        print(f"COBA Brian2 zero delay: {json.dumps({k: r.get(k) for k in ('seed', *COBA_KEYS, 'sim_s')})}",
              flush=True)
    sec = {"ours": {"runs": ours, **_mean_sd(ours, (*COBA_KEYS, "cpu_s"))},
           "brian2_cpp_standalone": {"runs": b, **_mean_sd([r for r in b if "rate_e_hz" in r],
                                                          (*COBA_KEYS, "sim_s"))}}
    c = {}
    for key in COBA_KEYS:
        if key in sec["brian2_cpp_standalone"] and key in sec["ours"]:
            c[f"{key}_ratio"] = sec["ours"][key] / sec["brian2_cpp_standalone"][key]
            c[f"{key}_within_5pct"] = abs(c[f"{key}_ratio"] - 1.0) <= 0.05
    if sec["brian2_cpp_standalone"].get("sim_s"):
        c["speedup_cpu"] = sec["brian2_cpp_standalone"]["sim_s"] / sec["ours"]["cpu_s"]
    sec["ours_vs_brian2"] = c
    print(f"COBA zero delay, ours / Brian2: {json.dumps(c)}", flush=True)
    return sec


def coba_references(args, result: dict) -> None:
    """COBA (Benchmark 1) like with like: ours, Brian2 C++ standalone and NEST's iaf_cond_exp,
    all with 0.1 ms synaptic delays (the shortest delay of ours and NEST: one step), over
    `--coba-seeds` network realisations each (seeds are per simulator: each draws its own
    network, so means over realisations are compared, not single runs), plus ours and Brian2
    with zero delays (its example scripts' form; `coba_zero_delay`).
    Rates and CV ISI with the same statistics (0.1 s transient), speed as CPU seconds of the
    simulation alone (ours: `cpu_s`; Brian2: `std::clock()` of its run; NEST: `Simulate`)."""
    from cluster.brainsim.simulate import simulate
    from cluster.brainsim.spec import NetworkSpec

    dur = 1.0 if args.quick else 10.0
    seeds = list(range(1, args.coba_seeds + 1))
    sec: dict = {"duration_s": dur, "delay_ms": 0.1, "seeds": seeds, "loadavg_start": os.getloadavg()}
    simulate(NetworkSpec(model="vogels_abbott_coba"), 0.05)  # Numba warm-up
    runs = []
    for seed in seeds:
        load = os.getloadavg()[0]
        rep = simulate(NetworkSpec(model="vogels_abbott_coba", seed=seed), dur)
        pops = rep["populations"]
        runs.append({"seed": seed, "cpu_s": rep["cpu_s"], "wall_s": rep["wall_s"], "loadavg_1min": load,
                     "rate_e_hz": pops["E"]["rate_hz"], "rate_i_hz": pops["I"]["rate_hz"],
                     "cv_isi_e": pops["E"]["cv_isi"], "cv_isi_i": pops["I"]["cv_isi"]})
        print(f"COBA ours seed {seed}: {json.dumps(runs[-1])}", flush=True)
    sec["ours"] = {"runs": runs, **_mean_sd(runs, (*COBA_KEYS, "cpu_s"))}
    refs = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        py = None if args.skip_brian2_coba else ensure_brian_venv()
        if py is not None:
            b = [brian2(py, "cpp_standalone", dur, work, "coba", 0.1, seed) for seed in seeds]
            for r in b:
                print(f"COBA Brian2 0.1 ms: {json.dumps({k: r.get(k) for k in ('seed', *COBA_KEYS, 'sim_s')})}",
                      flush=True)
            ok = [r for r in b if "rate_e_hz" in r]
            refs["brian2_cpp_standalone_0.1ms"] = {"runs": b, **_mean_sd(ok, (*COBA_KEYS, "sim_s"))}
            sec["zero_delay"] = coba_zero_delay(py, dur, work, seeds)
        npy = None if args.skip_nest_coba else nest_python()
        if npy is not None:
            n = [nest_coba(npy, dur, work, 0.1, seed) for seed in seeds[:args.coba_nest_seeds]]
            for r in n:
                print(f"COBA NEST: {json.dumps({k: r.get(k) for k in ('seed', *COBA_KEYS, 'sim_cpu_s')})}", flush=True)
            ok = [r for r in n if "rate_e_hz" in r]
            refs["nest_iaf_cond_exp_0.1ms"] = {"runs": n, **_mean_sd(ok, (*COBA_KEYS, "sim_cpu_s"))}
    out = Path(args.out)
    if npy is None and out.exists():  # NEST skipped: keep its realisations from the last run that had them
        earlier = json.loads(out.read_text()).get("coba_references", {}).get("references", {})
        nest = earlier.get("nest_iaf_cond_exp_0.1ms")
        if nest is not None:
            refs["nest_iaf_cond_exp_0.1ms"] = {**nest, "carried_over_from_an_earlier_run": True}
    sec["references"] = refs
    cmp = {}
    for name, ref in refs.items():
        c = {}
        for key in COBA_KEYS:
            if key in ref and key in sec["ours"]:
                ratio = sec["ours"][key] / ref[key]
                c[f"{key}_ratio"] = ratio
                c[f"{key}_within_5pct"] = abs(ratio - 1.0) <= 0.05
        cpu = ref.get("sim_s", ref.get("sim_cpu_s"))
        if cpu:
            c["speedup_cpu"] = cpu / sec["ours"]["cpu_s"]
        cmp[name] = c
    sec["ours_vs"] = cmp
    sec["loadavg_end"] = os.getloadavg()
    result["coba_references"] = sec
    print(json.dumps(cmp), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (1 s CUBA, small Brunel)")
    ap.add_argument("--skip-brian2", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="interleaved pairs of ours and the Brian2 binary (CUBA)")
    ap.add_argument("--skip-exchange", action="store_true", help="skip the per-window exchange cost")
    ap.add_argument("--skip-partitions", action="store_true", help="skip CUBA and Brunel 1 vs 2 partitions")
    ap.add_argument("--skip-nest", action="store_true", help="skip Brunel AI and the SONATA example against NEST")
    ap.add_argument("--skip-microcircuit", action="store_true", help="skip the full-scale microcircuit (minutes)")
    ap.add_argument("--only-cluster", action="store_true",
                    help="only the cluster sections (exchange, partitions, NEST, microcircuit)")
    ap.add_argument("--nest-reps", type=int, default=2, help="interleaved rounds of ours and NEST (Brunel AI)")
    ap.add_argument("--coba-seeds", type=int, default=3, help="COBA realisations per simulator (ours, Brian2)")
    ap.add_argument("--coba-nest-seeds", type=int, default=1, help="COBA realisations in NEST (~100 CPU s each)")
    ap.add_argument("--skip-coba-refs", action="store_true", help="skip COBA against Brian2 (0.1 ms) and NEST")
    ap.add_argument("--skip-brian2-coba", action="store_true")
    ap.add_argument("--skip-nest-coba", action="store_true")
    ap.add_argument("--only-coba", action="store_true", help="only COBA against its references")
    ap.add_argument("--out", default=str(RESULT), help="where to write the JSON")
    args = ap.parse_args()
    if args.only_cluster:
        args.skip_brian2 = args.skip_scaling = args.skip_memory = args.skip_coba_refs = True
    if args.only_coba:
        args.skip_brian2 = args.skip_scaling = args.skip_memory = True
        args.skip_exchange = args.skip_partitions = args.skip_nest = args.skip_microcircuit = True
    duration = 1.0 if args.quick else 10.0
    result: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                "note": "shared machine: other jobs compete for the 2 cores"},
                    "quick": args.quick, "loadavg_start": os.getloadavg()}
    for net, model in (("cuba", "vogels_abbott_cuba"), ("coba", "vogels_abbott_coba")):
        if args.only_cluster or args.only_coba:
            break
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
                    res = brian2(py, mode, duration, work, "cuba", 0.1)  # 0.1 ms delays, as ours
                    result["cuba"][f"brian2_{mode}"] = res
                    print(json.dumps(res), flush=True)
                result["cuba"].update(ratios(result["cuba"]))
                if "sim_s" in result["cuba"]["brian2_cpp_standalone"]:
                    print(f"CUBA, {duration:g} s: ours and the Brian2 binary, interleaved x{args.reps} ...", flush=True)
                    pairs = interleaved(work / "standalone_cuba_d0.1_s1", duration, args.reps)
                    result["cuba"]["interleaved_vs_brian2_cpp_standalone"] = pairs
                    print(json.dumps({k: v for k, v in pairs.items() if k != "reps"}), flush=True)
                print(f"COBA, {duration:g} s: Brian2 cpp_standalone (zero delay, as its examples) ...", flush=True)
                result["coba"]["brian2_cpp_standalone"] = brian2(py, "cpp_standalone", duration, work, "coba")
                result["coba"]["note"] = ("Brian2 here has zero-delay synapses (ours 0.1 ms): not like with like; "
                                          "see coba_references for the same network in Brian2 and NEST")
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
    if not args.skip_coba_refs:
        coba_references(args, result)
    cluster(args, result)
    result["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    if out.exists():  # a skipped section keeps its figures from the last run that measured it
        earlier = json.loads(out.read_text())
        for key in ("cuba", "coba", "coba_references", "brunel_scaling", "memory", "exchange", "partitions", "brunel_vs_nest", "sonata",
                    "microcircuit"):
            if key not in result and key in earlier:
                result[key] = {**earlier[key], "carried_over_from_an_earlier_run": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def cluster(args, result: dict) -> None:
    """The partitioned sections: exchange cost, 1 vs 2 partitions, NEST side by side, the microcircuit.

    They start their own local Ray instance (2 CPUs), never another session's cluster.
    """
    import ray

    if not (args.skip_exchange and args.skip_partitions and args.skip_nest and args.skip_microcircuit):
        # a niced benchmark nices Ray's own daemons too: on a loaded machine they miss heartbeats
        # for more than the default 15 s and the node is declared dead; allow 5 minutes
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _system_config={"health_check_failure_threshold": 100})
    try:
        if not args.skip_exchange:
            print("exchange cost per window, 2 partitions (threads, Ray actors) ...", flush=True)
            result["exchange"] = exchange_cost(20_000 if args.quick else 50_000)
        if not args.skip_partitions:
            result["partitions"] = {}
            for model, dur in (("vogels_abbott_cuba", 2.0 if args.quick else 10.0),
                               ("brunel2000", 0.2 if args.quick else 1.0)):
                print(f"{model}, {dur:g} s: 1 vs 2 partitions ...", flush=True)
                result["partitions"][model] = partitions_1_vs_2(model, dur, 1 if args.quick else 2)
        if not args.skip_nest:
            py = nest_python()
            if py is not None:
                scale, dur = (0.2, 0.3) if args.quick else (1.0, 1.0)
                print(f"Brunel AI scale {scale}, {dur:g} s: ours (1, 2 partitions) and NEST (1, 2 threads) ...",
                      flush=True)
                result["brunel_vs_nest"] = brunel_vs_nest(py, dur, 1 if args.quick else args.nest_reps, scale)
                with tempfile.TemporaryDirectory() as tmp:
                    print("SONATA 300_pointneurons: ours and NEST on the same arrays ...", flush=True)
                    result["sonata"] = sonata_vs_nest(py, SONATA_EXAMPLE, Path(tmp))
                    print(json.dumps(result["sonata"]["per_population"]), flush=True)
        if not args.skip_microcircuit:
            scale, dur = (0.1, 0.3) if args.quick else (1.0, 1.0)
            print(f"microcircuit scale {scale}, {dur:g} s on 2 Ray actors ...", flush=True)
            result["microcircuit"] = microcircuit(dur, 2, scale)
            print(json.dumps({k: v for k, v in result["microcircuit"].items() if k != "rates"}), flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if not args.skip_exchange:
        print("exchange per window across two Ray nodes (the bridge) ...", flush=True)
        result["exchange"]["cross_node"] = exchange_cross_node(2_000 if args.quick else 5_000)


if __name__ == "__main__":
    sys.exit(main())
