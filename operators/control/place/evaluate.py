"""`reflexarc eval configs/place_recognition.yaml`: ensemble vs ensemble without removal vs SAD.

Builds the synthetic route (or the user's folders, `eval.folder`), trains the ensemble,
scores the query traversal with and without hyperactive-neuron removal, rate-coded (not
spiking: expected drives) and spiking (integrate-and-fire runs, spikes-only readout; recall
against steps per query; the same network on the emulated chip with SynOps and energy), with the full search and with the localised (windowed) search run in route order, against SAD on the same images (and, for context, SAD with the same one-pixel shift
tolerance the ensemble is trained for), each also with sequence matching over k frames,
prints Recall@1/@5, PR AUC and recall at 100% precision, and writes PR curves, the match
matrix and the report JSON into out_dir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from operators.control.place import tracking
from operators.control.place.ensemble import Ensemble, metrics, sad_scores, sequence_scores
from operators.control.place.network import ModuleParams
from operators.control.place.ops import dataset
from operators.control.place.tracking import Window

KEYS = ("recall@1", "recall@5", "pr_auc", "recall@100%precision")
RATE = "ensemble (rate-coded drive, not spiking)"


def spiking_name(steps: int) -> str:
    return f"ensemble (spiking, {steps} steps)"


def chip_name(chip: str, steps: int) -> str:
    return f"ensemble (spiking on emulated {chip}, int8, {steps} steps)"


def _plots(out_dir: Path, curves: dict, match: np.ndarray) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, m in curves.items():
        ax.plot(m["recall"], m["precision"], label=f"{name} (AUC {m['pr_auc']:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    pr = out_dir / "place_pr_curves.png"
    fig.savefig(pr, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(match, aspect="auto", cmap="viridis")
    ax.set_xlabel("reference place")
    ax.set_ylabel("query frame")
    ax.set_title("ensemble match scores")
    fig.tight_layout()
    mm = out_dir / "place_match_matrix.png"
    fig.savefig(mm, dpi=110)
    plt.close(fig)
    return [str(pr), str(mm)]


def run(config_path, config: dict, out_dir, quick: bool) -> dict:
    ev = config.get("eval") or {}
    n = int(ev.get("quick_places", 50) if quick else ev.get("n_places", 100))
    seed = int(ev.get("seed", 0))
    k = int(ev.get("sequence_k", 4))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    d = dataset(n, seed, ev.get("folder"))
    t0 = time.perf_counter()
    mp = ModuleParams(epochs=int(ev.get("epochs", 8)), n_neurons=int(ev.get("n_neurons", 80)),
                      jitter_px=int(ev.get("jitter_px", 1)), readout=str(ev.get("readout", "max")))
    ens = Ensemble.fit(d["reference"], d["calibration"], d["calibration_places"], int(ev.get("places_per_module", 10)),
                       mp, int(ev.get("workers", 0)), seed)
    train_s = time.perf_counter() - t0
    truth, q = d["query_places"], d["query"]
    raw = {RATE: ens.scores(q), f"{RATE} (no removal)": ens.scores(q, removal=False)}
    # The localised search a robot would run: the query traversal in route order, each frame
    # searched near the last confident place, full search on low score (ops.PlaceEnsemble).
    win = Window(int(ev.get("window_modules", 2)), int(ev.get("places_per_module", 10)),
                 refresh_every=int(ev.get("refresh_every", 0)))
    win = tracking.calibrated(ens, d["calibration"], d["calibration_places"], win, len(d["reference"]),
                              float(ev.get("window_keep", 0.9)), float(ev.get("sure_precision", 0.9)),
                              float(ev.get("lost_false_alarm", 0.01)) if ev.get("lost_detector", True) else None)
    track, rows_w = tracking.Track(), []
    for img in q:
        row, track, _ = tracking.search(ens, img, track, win, len(d["reference"]))
        rows_w.append(row)
    raw[f"{RATE} (windowed search)"] = np.array(rows_w)
    window = {"modules_either_side": win.modules, "threshold_mv": round(win.threshold, 3), "sure": round(win.sure, 4),
              "queries": track.queries, "full_search_rate": round(track.full / max(track.queries, 1), 4),
              "fallback_rate": round(track.fallbacks / max(track.queries, 1), 4),
              "far_window_pass": round(tracking.far_pass(ens, q, truth, win, len(d["reference"])), 4),
              "lost_at": round(win.lost_at, 3), "llr": [round(v, 3) for v in win.llr]}
    spiking = {}
    if ev.get("spiking", True):
        # The same trained modules queried by integrate-and-fire runs of `spike_steps` steps
        # (threshold and hyperactivity cut recalibrated for it), read out from spikes only.
        steps = int(ev.get("spike_steps", 32))
        curve_steps = sorted({*(int(t) for t in ev.get("spike_steps_curve", [4, 8, 16, 32, 64])), steps})
        if quick:
            curve_steps = sorted({8, steps})
        spiking["curve"] = []
        for t in curve_steps:
            spk = ens.requeried("spiking", d["calibration"], d["calibration_places"], spike_steps=t)
            s_t = spk.scores(q)
            m_t = metrics(s_t, truth)
            spiking["curve"].append({"steps": t, "cut": int(spk.cut), **{key: round(m_t[key], 4) for key in KEYS}})
            if t == steps:
                raw[spiking_name(steps)] = s_t
                raw[f"{spiking_name(steps)} (no removal)"] = spk.scores(q, removal=False)
                spiking.update(steps=steps, threshold=round(spk.modules()[0].params.spike_threshold, 4),
                               cut=int(spk.cut))
                chip = ev.get("chip", "loihi")
                if chip:
                    from operators.control.place.chip import chip_scores, stacked_spiking
                    from operators.control.place.network import if_run, input_spikes

                    s_c, rep = chip_scores(spk.modules(), q, chip)
                    raw[chip_name(chip, steps)] = s_c
                    spiking["chip"] = {k: v for k, v in rep.items() if k != "populations"}
                    # the float path's work on the same queries: every input spike reaches every kept neuron
                    w_f, _, _ = stacked_spiking(spk.modules())
                    p_f = spk.modules()[0].params
                    sp_in = input_spikes(q, steps, p_f.spike_rate)
                    count, _ = if_run(sp_in, w_f, p_f.spike_threshold)
                    spiking["float"] = {"synops_per_query": float(sp_in.sum()) * w_f.shape[1] / len(q),
                                        "spikes_per_query": float(count.sum()) / len(q), "neurons": int(w_f.shape[1])}
    raw["SAD"] = sad_scores(d["reference"], q)
    raw["SAD (1 px shift search)"] = sad_scores(d["reference"], q, shift_px=mp.jitter_px or 1)
    ens.close()
    rows, curves = {}, {}
    for name, s in raw.items():
        for label, scores in ((name, s), (f"{name} + seq{k}", sequence_scores(s, k))):
            m = metrics(scores, truth)
            curves[label] = m
            rows[label] = {key: round(m[key], 4) for key in KEYS}
    pngs = _plots(out_dir, curves, raw[RATE])
    verdict = {"ensemble_beats_sad_recall@1": rows[RATE]["recall@1"] > rows["SAD"]["recall@1"],
               "removal_gain": {key: round(rows[RATE][key] - rows[f"{RATE} (no removal)"][key], 4)
                                for key in KEYS}}
    verdict["windowed_minus_full_recall@1"] = round(rows[f"{RATE} (windowed search)"]["recall@1"]
                                                    - rows[RATE]["recall@1"], 4)
    verdict["windowed_search"] = window
    if spiking.get("steps"):
        spk_row = rows[spiking_name(spiking["steps"])]
        verdict["spiking_at_least_sad_recall@1"] = spk_row["recall@1"] >= rows["SAD"]["recall@1"]
        verdict["spiking_over_rate_recall@100%precision"] = round(
            spk_row["recall@100%precision"] / max(rows[RATE]["recall@100%precision"], 1e-9), 4)
        verdict["removal_gain_spiking"] = {key: round(spk_row[key] - rows[f"{spiking_name(spiking['steps'])} "
                                                                          "(no removal)"][key], 4) for key in KEYS}
        verdict["spiking"] = spiking
    report = {"places": int(len(d["reference"])), "queries": int(len(truth)), "train_s": round(train_s, 2),
              "methods": rows, "targets": verdict, "plots": pngs,
              "readouts": {RATE: "not spiking: each neuron's expected membrane drive (one matrix product), best "
                                 "neuron per place",
                           "spiking": "integrate-and-fire run of the same neurons on regular input spike trains; "
                                      "per place the best neuron's spike count, ties by its first spike",
                           "chip": "the spiking run on the neuromorphic emulator (int8 weights, fixed-point "
                                   "membrane, chip profile energies)"}}
    (out_dir / "place_report.json").write_text(json.dumps(report, indent=2))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"place recognition: {report['places']} places, {report['queries']} queries")
    table.add_column("method")
    for key in KEYS:
        table.add_column(key, justify="right")
    for name, r in rows.items():
        table.add_row(name, *(f"{r[key]:.3f}" for key in KEYS))
    Console().print(table)
    if spiking.get("curve"):
        curve = Table(title="spiking query: recall against simulated steps per query")
        for col in ("steps", "cut", *KEYS):
            curve.add_column(col, justify="right")
        for c in spiking["curve"]:
            curve.add_row(str(c["steps"]), str(c["cut"]), *(f"{c[key]:.3f}" for key in KEYS))
        Console().print(curve)
    if spiking.get("chip"):
        c, f = spiking["chip"], spiking["float"]
        work = Table(title=f"spiking query, {c['steps_per_query']} steps: float path and emulated {c['chip']} "
                           f"({c['neurons']} neurons, {c['cores']} cores), per query")
        for col in ("path", "recall@1", "recall@100%precision", "SynOps", "output spikes", "energy (uJ)"):
            work.add_column(col, justify="right")
        fr, cr = rows[spiking_name(spiking["steps"])], rows[chip_name(c["chip"], spiking["steps"])]
        work.add_row("float32", f"{fr['recall@1']:.3f}", f"{fr['recall@100%precision']:.3f}",
                     f"{f['synops_per_query']:.3g}", f"{f['spikes_per_query']:.0f}", "-")
        work.add_row(f"{c['chip']} int8", f"{cr['recall@1']:.3f}", f"{cr['recall@100%precision']:.3f}",
                     f"{c['synops_per_query']:.3g}", f"{c['spikes_per_query']:.0f}", f"{c['energy_uj_per_query']:.1f}")
        Console().print(work)
    Console().print(f"targets: { {k: v for k, v in verdict.items() if k != 'spiking'} }")
    return report
