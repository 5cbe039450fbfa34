"""`reflexarc eval configs/calcium_connectome.yaml`: the calcium chain against ground truth.

Two parts. (1) The OASIS benchmark setting on traces alone: AR(1) g = 0.95, unit spikes,
Gaussian noise of std `sigma` (0.3), 0.5 Hz at 30 Hz; our online deconvolution and
`oasis-deconv` (offline) side by side. (2) The configured pipeline end to end on the
synthetic movie: motion residual, ROI detection, spike inference, planted-ensemble
recovery (adjusted Rand index per epoch) and frame-to-trigger latency. Writes
report.json and PNGs to out_dir and prints a table.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from operators.calcium.deconv import deconvolve, noise_sigma
from operators.calcium.synth import MovieParams, generate, synthetic_traces

# --- scores ----------------------------------------------------------------------------


def spike_f1(inferred: np.ndarray, truth: np.ndarray, tol: int = 1) -> float:
    """F1 of inferred spike frames (> 0) against true spike frames, matched within +-tol."""
    tp = fp = fn = 0
    for k in range(truth.shape[1]):
        tr = list(np.flatnonzero(truth[:, k] > 0))
        used = np.zeros(len(tr), bool)
        for f in np.flatnonzero(inferred[:, k] > 0):
            j = np.searchsorted(tr, f - tol)
            hit = False
            while j < len(tr) and tr[j] <= f + tol:
                if not used[j]:
                    used[j] = hit = True
                    break
                j += 1
            tp += hit
            fp += not hit
        fn += int((~used).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def mean_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over columns of the Pearson correlation (columns without variance skipped)."""
    out = []
    for k in range(a.shape[1]):
        if a[:, k].std() > 0 and b[:, k].std() > 0:
            out.append(np.corrcoef(a[:, k], b[:, k])[0, 1])
    return float(np.mean(out)) if out else float("nan")


def adjusted_rand(x, y) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie 1985)."""
    x, y = np.asarray(x), np.asarray(y)
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    table = np.zeros((xi.max() + 1, yi.max() + 1))
    np.add.at(table, (xi, yi), 1)

    def c2(v):
        return (v * (v - 1) / 2).sum()

    n = len(x)
    index, a, b = c2(table), c2(table.sum(1)), c2(table.sum(0))
    expected = a * b / (n * (n - 1) / 2)
    top = (a + b) / 2
    return 1.0 if top == expected else float((index - expected) / (top - expected))


def match_rois(found: np.ndarray, truth: np.ndarray, min_iou: float = 0.2) -> dict[int, int]:
    """ROI index -> neuron index, by maximum total IoU (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    f = found.reshape(len(found), -1).astype(np.float32)
    t = truth.reshape(len(truth), -1).astype(np.float32)
    inter = f @ t.T
    union = f.sum(1)[:, None] + t.sum(1)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    r, c = linear_sum_assignment(-iou)
    return {int(i): int(j) for i, j in zip(r, c, strict=True) if iou[i, j] >= min_iou}


# --- the run -----------------------------------------------------------------------------


def trace_benchmark(cfg: dict, deconv: dict, quick: bool) -> dict:
    """Part (1): the OASIS setting on traces, ours (online) vs oasis-deconv (offline)."""
    sigma = float(cfg.get("sigma", 0.3))
    n = int(cfg.get("trace_neurons", 100)) // (4 if quick else 1)
    t = int(cfg.get("trace_frames", 3000))
    g = 0.95
    y, s = synthetic_traces(n, t, sigma=sigma, g=g, seed=1)
    smin = deconv.get("smin_sigma", 1.5) * noise_sigma(y, g)
    ours = deconvolve(y, g, 0.0, smin, lag=deconv.get("lag_frames", 4))
    out = {"sigma": sigma, "traces": n, "frames": t,
           "corr": mean_corr(ours, s), "f1": spike_f1(ours, s)}
    try:
        from oasis import oasisAR1

        ref = np.column_stack([oasisAR1(y[:, k].copy(), g, s_min=smin[k])[1] for k in range(n)])
        out.update(oasis_corr=mean_corr(ref, s), oasis_f1=spike_f1(ref, s))
    except ImportError:  # the reference is optional
        pass
    return out


def _collect(batches, skip_t=True):
    import pyarrow as pa

    if not batches:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    tab = pa.Table.from_batches(batches)
    t = tab.column("t").to_numpy()
    cols = [tab.column(n).to_numpy() for n in tab.column_names if n != "t"]
    return t, np.column_stack(cols) if cols else np.zeros((len(t), 0))


def run(config_path, config: dict, out_dir, quick: bool = False) -> dict:
    """The eval runner named in configs/calcium_connectome.yaml (see module docstring)."""
    import pipeline
    from pipeline.errors import ConfigError
    from pipeline.graph import Graph
    from pipeline.testing import CollectSink

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(config.get("eval") or {})
    data = copy.deepcopy(config)
    nodes = data["nodes"]
    by_op = {spec.get("op"): nid for nid, spec in nodes.items()}
    need = ["calcium_synthetic", "calcium_motion", "calcium_traces", "calcium_deconv", "calcium_connectome"]
    missing = [o for o in need if o not in by_op]
    if missing:
        raise ConfigError(f"calcium eval needs nodes of {missing} (ground truth comes from calcium_synthetic)", str(config_path))
    src, mot, tra, dec, con = (by_op[o] for o in need)
    dff = by_op.get("calcium_dff")
    sp = nodes[src].setdefault("params", {})
    if quick:
        sp["n_frames"] = min(int(sp.get("n_frames", 1800)), 900)
    nodes[tra].setdefault("params", {})["save_masks"] = str(out_dir / "masks.npy")
    nodes[con].setdefault("params", {})["save_report"] = str(out_dir / "connectome.npz")
    deconv_params = nodes[dec].get("params") or {}

    report = {"config": str(config_path), "quick": quick}
    report["traces"] = trace_benchmark(cfg, deconv_params, quick)

    graph = Graph.from_dict(data, source=str(config_path))
    taps = {"shifts": f"{mot}.shifts", "activity": f"{dec}.activity", "communities": f"{con}.out"}
    if dff:
        taps["dff"] = f"{dff}.out"
    for name, stream in taps.items():
        graph.add(f"_eval_{name}", CollectSink(), inputs={"in": stream})
    result = pipeline.run(graph)
    got = {name: _collect(result.results[f"_eval_{name}"]["batches"]) for name in taps}

    fields = MovieParams.model_fields
    movie = generate(MovieParams(**{k: v for k, v in sp.items() if k in fields}))
    fps = movie.params["rate_hz"]
    frame_of = {int(t): i for i, t in enumerate(movie.t_us)}

    # motion: estimated vs true displacement, a constant offset (template frame) removed
    t_sh, sh = got["shifts"]
    idx = np.array([frame_of[int(t)] for t in t_sh])
    err = sh[:, :2] - movie.shifts[idx]
    err -= np.median(err, axis=0)
    report["motion"] = {
        "raw_rms_px": float(np.sqrt((movie.shifts**2).sum(1).mean())),
        "residual_rms_px": float(np.sqrt((err**2).sum(1).mean())),
        "flagged_frames": int((sh[:, 2] > 0).sum()),
    }

    labels = np.load(out_dir / "masks.npy")
    masks = np.stack([labels == i + 1 for i in range(labels.max())]) if labels.max() else np.zeros((0,) + labels.shape, bool)
    pairs = match_rois(masks, movie.masks)
    report["rois"] = {"truth": len(movie.masks), "found": len(masks), "matched": len(pairs)}

    t_act, act = got["activity"]
    rows = np.array([frame_of[int(t)] for t in t_act])
    roi_ids = np.array(sorted(pairs))
    inferred = np.zeros((len(movie.t_us), len(roi_ids)))
    inferred[rows] = act[:, roi_ids]
    truth = movie.spikes[:, [pairs[r] for r in roi_ids]]
    report["spikes"] = {"corr": mean_corr(inferred, truth), "f1": spike_f1(inferred, truth),
                        "lag_frames": int(deconv_params.get("lag_frames", 4))}

    rep = np.load(out_dir / "connectome.npz")
    members, tc, wt = rep["members"], rep["time_courses"], rep["window_t_us"]
    win_frames = int((nodes[con].get("params") or {}).get("window_frames", 60))
    ep = movie.epoch_frames
    wend = np.array([frame_of[int(t)] for t in wt])
    aris = []
    for e, ens in enumerate(movie.epoch_ensemble):
        inside = (wend - win_frames + 1 >= e * ep) & (wend < (e + 1) * ep)
        if not inside.any() or ens < 0:
            continue
        k = int(np.argmax(tc[inside].mean(0)))
        pred = np.zeros(len(movie.masks), bool)
        for roi in np.flatnonzero(members[k]):
            if roi in pairs:
                pred[pairs[roi]] = True
        aris.append({"epoch": e, "ensemble": int(ens), "component": k,
                     "ari": adjusted_rand(movie.ensembles == ens, pred)})
    report["ensembles"] = {"per_epoch": aris, "ari_mean": float(np.mean([a["ari"] for a in aris])) if aris else float("nan"),
                           "ari_min": float(np.min([a["ari"] for a in aris])) if aris else float("nan")}
    stim = next((v for k, v in result.results.items() if isinstance(v, dict) and "stimuli" in v), {})
    report["trigger"] = {k: stim.get(k) for k in ("stimuli", "suppressed", "latency_ms_median", "latency_ms_max")}
    if stim.get("latency_ms_median") is not None:
        report["trigger"]["frame_to_trigger_ms_incl_lag"] = stim["latency_ms_median"] + 1000 * report["spikes"]["lag_frames"] / fps
    report["wall_s"] = result.wall_s
    report["targets"] = {"trace_corr>=0.8": report["traces"]["corr"] >= 0.8, "ari>=0.9": report["ensembles"]["ari_min"] >= 0.9}

    _plots(out_dir, movie, masks, got, members, tc, wt, pairs, fps)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    _table(report)
    return report


def _table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    tr, sp, mo, en, tg = (report[k] for k in ("traces", "spikes", "motion", "ensembles", "trigger"))
    table = Table(title="calcium imaging: evaluation")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target / peer")
    rows = [
        (f"trace spike corr (sigma {tr['sigma']})", f"{tr['corr']:.3f}", f">= 0.8; oasis-deconv {tr.get('oasis_corr', float('nan')):.3f}"),
        ("trace spike F1 (+-1 frame)", f"{tr['f1']:.3f}", f"oasis-deconv {tr.get('oasis_f1', float('nan')):.3f}"),
        ("motion RMS before -> after (px)", f"{mo['raw_rms_px']:.2f} -> {mo['residual_rms_px']:.3f}", f"{mo['flagged_frames']} flagged frames"),
        ("ROIs found / matched / true", f"{report['rois']['found']} / {report['rois']['matched']} / {report['rois']['truth']}", ""),
        ("movie spike corr", f"{sp['corr']:.3f}", f"lag {sp['lag_frames']} frames"),
        ("movie spike F1 (+-1 frame)", f"{sp['f1']:.3f}", ""),
        ("ensemble ARI per epoch (min / mean)", f"{en['ari_min']:.3f} / {en['ari_mean']:.3f}", ">= 0.9"),
        ("stimuli fired / suppressed", f"{tg['stimuli']} / {tg['suppressed']}", ""),
        ("frame-to-trigger wall latency (median ms)", f"{tg['latency_ms_median']}", "plus the deconvolution lag"),
    ]
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def _plots(out_dir, movie, masks, got, members, tc, wt, pairs, fps) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(movie.frames.mean(0), cmap="gray")
    for k, m in enumerate(masks):
        ax.contour(m, levels=[0.5], colors=["C1" if k in pairs else "C3"], linewidths=0.8)
    ax.set_title("mean image with ROIs (orange: matched to a true neuron)")
    ax.axis("off")
    fig.savefig(out_dir / "mean_image_rois.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    if "dff" in got:
        t_d, dff = got["dff"]
        t_a, act = got["activity"]
        show = sorted(pairs)[:6]
        fig, axes = plt.subplots(len(show), 1, figsize=(10, 1.6 * len(show)), sharex=True)
        for ax, roi in zip(np.atleast_1d(axes), show, strict=False):
            ax.plot(t_d / 1e6, dff[:, roi], lw=0.6, color="k")
            top = dff[:, roi].max()
            s_true = np.flatnonzero(movie.spikes[:, pairs[roi]] > 0) / fps
            ax.vlines(s_true, top * 1.05, top * 1.2, color="C2", lw=0.8)
            ax.vlines(t_a[act[:, roi] > 0] / 1e6, top * 1.25, top * 1.4, color="C3", lw=0.8)
            ax.set_ylabel(f"roi{roi}")
        np.atleast_1d(axes)[0].set_title("dF/F with true (green) and inferred (red) spikes")
        np.atleast_1d(axes)[-1].set_xlabel("s")
        fig.savefig(out_dir / "traces_spikes.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    t_c, comm = got["communities"]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for e in range(len(movie.epoch_ensemble)):
        for ax in (a1, a2):
            ax.axvspan(e * movie.epoch_frames / fps, (e + 1) * movie.epoch_frames / fps, color=f"C{movie.epoch_ensemble[e]}", alpha=0.08)
    for k in range(comm.shape[1]):
        a1.plot(t_c / 1e6, comm[:, k], lw=0.7, label=f"comp{k}", color=f"C{k}")
        a2.plot(np.asarray(wt) / 1e6, tc[:, k], marker=".", lw=1, color=f"C{k}")
    a1.set_ylabel("ensemble activity")
    a1.legend(loc="upper right", fontsize=7)
    a2.set_ylabel("NTF time course")
    a2.set_xlabel("s (shading: planted ensemble of the epoch)")
    fig.savefig(out_dir / "community_time_courses.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
