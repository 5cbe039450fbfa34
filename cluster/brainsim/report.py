"""What a simulation did: rates, ISI irregularity, synchrony per population, and the plots.

Statistics skip an initial transient (`transient_ms`):
- rate: spikes per neuron per second;
- CV ISI: the coefficient of variation of inter-spike intervals, averaged over neurons with
  at least 3 spikes (Poisson-like irregular firing gives about 1, regular firing near 0);
- chi: Golomb's (2007, Scholarpedia 2:1347) synchrony measure on 2 ms spike counts of up to
  1,000 neurons: sqrt(var of the population mean / mean of single-neuron variances); about
  1/sqrt(N) for independent neurons, towards 1 for full synchrony;
- fano_pop: the Fano factor of the population spike count in 1 ms bins (1 for Poisson).
"""

from __future__ import annotations

import numpy as np


def population_stats(t_ms: np.ndarray, neuron: np.ndarray, size: int, duration_ms: float,
                     transient_ms: float = 100.0) -> dict:
    """Rate, CV ISI and synchrony of one population's spikes (neuron index within it)."""
    keep = t_ms >= transient_ms
    t_ms, neuron = t_ms[keep], neuron[keep]
    span_ms = max(duration_ms - transient_ms, 1e-9)
    rate = len(t_ms) / size / (span_ms * 1e-3)
    cv = float("nan")
    if len(t_ms) > 2:
        order = np.lexsort((t_ms, neuron))
        n_s, t_s = neuron[order], t_ms[order]
        same = n_s[1:] == n_s[:-1]
        isi = np.diff(t_s)[same]
        owner = n_s[1:][same]
        counts = np.bincount(owner, minlength=size)
        s1 = np.bincount(owner, isi, minlength=size)
        s2 = np.bincount(owner, isi * isi, minlength=size)
        ok = counts >= 2
        if ok.any():
            mean = s1[ok] / counts[ok]
            var = np.maximum(s2[ok] / counts[ok] - mean**2, 0.0)
            cv = float(np.mean(np.sqrt(var) / mean))
    chi = fano = float("nan")
    if len(t_ms):
        sample = min(size, 1000)
        sel = neuron < sample
        bins = max(1, int(span_ms / 2.0))
        idx = np.minimum(((t_ms[sel] - transient_ms) / 2.0).astype(np.int64), bins - 1)
        counts = np.zeros((sample, bins))
        np.add.at(counts, (neuron[sel], idx), 1.0)
        indiv = counts.var(axis=1).mean()
        chi = float(np.sqrt(counts.mean(axis=0).var() / indiv)) if indiv > 0 else float("nan")
        n_ms = max(1, int(span_ms))
        pop = np.bincount(np.minimum((t_ms - transient_ms).astype(np.int64), n_ms - 1), minlength=n_ms)
        fano = float(pop.var() / pop.mean()) if pop.mean() > 0 else float("nan")
    return {"neurons": int(size), "spikes": int(len(t_ms)), "rate_hz": float(rate), "cv_isi": cv,
            "chi": chi, "fano_pop": fano}


def plot(spikes: dict[str, tuple[np.ndarray, np.ndarray, int]], duration_ms: float, folder,
         window_ms: float = 500.0, per_pop: int = 200) -> list[str]:
    """A raster of the first `per_pop` neurons of each population and their population rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_end = duration_ms
    t_start = max(0.0, t_end - window_ms)
    fig, ax = plt.subplots(figsize=(9, 5))
    base = 0
    for name, (t_ms, neuron, size) in spikes.items():
        sel = (neuron < per_pop) & (t_ms >= t_start)
        ax.scatter(t_ms[sel], neuron[sel] + base, s=0.5, marker=".", label=name)
        base += min(per_pop, size)
    ax.set(xlabel="time (ms)", ylabel="neuron", title=f"raster (first {per_pop} neurons per population)")
    ax.legend(loc="upper right", markerscale=10)
    fig.tight_layout()
    fig.savefig(folder / "raster.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 4))
    edges = np.arange(0.0, duration_ms + 1.0, 1.0)
    for name, (t_ms, _neuron, size) in spikes.items():
        counts, _ = np.histogram(t_ms, edges)
        ax.plot(edges[:-1], counts / size / 1e-3, lw=0.6, label=name)
    ax.set(xlabel="time (ms)", ylabel="population rate (Hz, 1 ms bins)", xlim=(t_start, t_end))
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(folder / "rates.png", dpi=110)
    plt.close(fig)
    return ["raster.png", "rates.png"]
