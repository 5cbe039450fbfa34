"""The dynamic functional connectome: sliding-window affinities -> tensor -> NTF -> communities.

After "Learning dynamic representations of the functional connectome in neurobiological
networks" (Dyballa et al., 2024): each window of activity gives a non-negative
neuron x neuron affinity; the windows stack into a neuron x neuron x window tensor whose
non-negative CP factorisation (tensorly) splits it into components, each a neuron
loading and a time course. Per component, the affinity graph weighted by that
component's time course is partitioned by weighted Louvain community detection, and the
community carrying most of the component's loading is the component's ensemble. The
operator emits, per frame, the mean activity of each component's ensemble.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from operators.calcium import samples
from operators.calcium.kernels import window_affinity
from pipeline import schemas as sch
from pipeline.operator import Operator, Params, register


def factorise(tensor: np.ndarray, rank: int, n_iter: int = 200, seed: int = 0):
    """Non-negative CP factors (A neurons x rank, C windows x rank) of an (n, n, w) tensor.

    Component weights are folded into C; A columns have unit max.
    """
    import tensorly as tl
    from tensorly.decomposition import non_negative_parafac

    # SVD initialisation: deterministic, and random starts were seen to split one ensemble
    # across two components and miss another
    cp = non_negative_parafac(tl.tensor(tensor), rank=rank, n_iter_max=n_iter, init="svd", random_state=seed, tol=1e-7)
    weights, (a, b, c) = cp
    a = np.asarray(a) + np.asarray(b)  # the tensor is symmetric in its first two modes
    scale = a.max(0) + 1e-12
    c = np.asarray(c) * np.asarray(weights)[None, :] * scale[None, :] ** 2
    return a / scale[None, :], c


def match_components(previous: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The column order of `new` that best matches `previous` loadings (cosine, Hungarian),
    so that a component keeps its index, and a trigger its ensemble, across refits."""
    from scipy.optimize import linear_sum_assignment

    pn = previous / (np.linalg.norm(previous, axis=0, keepdims=True) + 1e-12)
    nn = new / (np.linalg.norm(new, axis=0, keepdims=True) + 1e-12)
    _, cols = linear_sum_assignment(-(pn.T @ nn))
    return cols


def communities(tensor: np.ndarray, a: np.ndarray, c: np.ndarray, resolution: float = 1.0, seed: int = 0, min_loading: float = 0.3) -> list[np.ndarray]:
    """Per component: the members of the Louvain community carrying most of its loading
    (those with a loading of at least `min_loading` of the component's largest)."""
    import networkx as nx

    out = []
    for k in range(a.shape[1]):
        w = tensor @ (c[:, k] / (c[:, k].sum() + 1e-12))
        w = w * np.outer(a[:, k], a[:, k])
        g = nx.Graph()
        g.add_nodes_from(range(len(w)))
        iu = np.argwhere(np.triu(w, 1) > 1e-9)
        g.add_weighted_edges_from((int(i), int(j), float(w[i, j])) for i, j in iu)
        parts = nx.community.louvain_communities(g, weight="weight", resolution=resolution, seed=seed)
        best = max(parts, key=lambda p: a[list(p), k].sum())
        out.append(np.array(sorted(i for i in best if a[i, k] >= min_loading), np.int64))
    return out


@register
class Connectome(Operator):
    """Dynamic functional connectome over activity traces; emits ensemble time courses."""

    name = "calcium_connectome"
    inputs = {"in": "samples"}
    outputs = {"out": "samples"}

    class Params(Params):
        window_frames: int = Field(60, ge=4)
        step_frames: int = Field(30, ge=1)
        rank: int = Field(3, ge=1, description="tensor components (ensembles) sought")
        power: float = Field(1.0, gt=0, description="affinity = max(corr, 0) ** power")
        smooth_frames: int = Field(3, ge=1, description="box smoothing of activity before affinity")
        history_windows: int = Field(400, ge=2)
        min_windows: int = Field(12, ge=2, description="windows before the first factorisation")
        refit_every: int = Field(10, ge=1, description="refactorise every this many windows")
        n_iter: int = Field(200, ge=10)
        resolution: float = Field(1.0, gt=0)
        min_loading: float = Field(0.3, ge=0, le=1, description="members need this share of the top loading")
        seed: int = 0
        refit_at_end: bool = Field(True, description="factorise the held windows once more when the stream ends")
        save_report: str | None = Field(None, description="write the final factors and members here (.npz)")

    def schemas(self, inputs):
        rate = sch.fact(inputs["in"], "rate_hz", 30.0)
        return {"out": sch.samples_schema([f"comp{k}" for k in range(self.params.rank)], rate, "activity")}

    def setup(self):
        self.ring = None
        self.frames = 0
        self.affinities: list[np.ndarray] = []
        self.window_t: list[int] = []
        self.members: list[np.ndarray] | None = None
        self.loadings = None
        self.time_courses = None
        self.fits = 0
        self._smooth = None
        self._schema = None

    def process(self, port, batch):
        p = self.params
        t = sch.column(batch, "t")
        x = samples.matrix(batch).astype(np.float64)
        if self._schema is None:
            self._schema = self.schemas({"in": batch.schema})["out"]
            self.ring = np.zeros((p.window_frames, x.shape[1]))
            self._smooth = np.zeros((p.smooth_frames, x.shape[1]))
        out = np.zeros((len(t), p.rank), np.float32)
        for i in range(len(t)):
            self._smooth[self.frames % p.smooth_frames] = x[i]
            xs = self._smooth.mean(0)
            self.ring[self.frames % p.window_frames] = xs
            self.frames += 1
            if self.frames >= p.window_frames and (self.frames - p.window_frames) % p.step_frames == 0:
                self._window(int(t[i]))
            if self.members is not None:
                for k, m in enumerate(self.members):
                    out[i, k] = xs[m].mean() if len(m) else 0.0
        return sch.samples_batch(t, out, self._schema)

    def _window(self, t_end: int):
        p = self.params
        self.affinities.append(window_affinity(self.ring, p.power))
        self.window_t.append(t_end)
        if len(self.affinities) > p.history_windows:
            self.affinities.pop(0)
            self.window_t.pop(0)
        n = len(self.affinities)
        if n >= p.min_windows and (self.members is None or n % p.refit_every == 0):
            self.refit()

    def tensor(self) -> np.ndarray:
        return np.stack(self.affinities, axis=2)

    def refit(self):
        """Factorise the held windows and redo the communities (also called at the end)."""
        p = self.params
        if len(self.affinities) < 2:
            return
        x = self.tensor()
        a, c = factorise(x, p.rank, p.n_iter, p.seed)
        if self.loadings is not None:  # keep component k the same ensemble across refits
            order = match_components(self.loadings, a)
            a, c = a[:, order], c[:, order]
        self.loadings, self.time_courses = a, c
        self.members = communities(x, a, c, p.resolution, p.seed, p.min_loading)
        self.fits += 1

    def finish(self):
        if self.params.refit_at_end:
            self.refit()
        return None

    def close(self):
        if self.params.save_report and self.members is not None:
            rep = self.report()
            members = np.full((len(rep["members"]), rep["loadings"].shape[0]), False)
            for k, m in enumerate(rep["members"]):
                members[k, m] = True
            np.savez(self.params.save_report, loadings=rep["loadings"], time_courses=rep["time_courses"],
                     members=members, window_t_us=rep["window_t_us"], fits=rep["fits"])

    def report(self) -> dict:
        """The latest factorisation: loadings, time courses, members, window end times."""
        return {
            "loadings": self.loadings, "time_courses": self.time_courses,
            "members": self.members, "window_t_us": np.array(self.window_t), "fits": self.fits,
        }
