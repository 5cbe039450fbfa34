"""Place-recognition operators: `place_route` (frames source), `place_ensemble`, `localisation` (sink)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from operators.control.place import tracking
from operators.control.place.ensemble import Ensemble, confidence
from operators.control.place.network import ModuleParams
from operators.control.place.route import SIDE, load_folders, synthetic
from pipeline import schemas as sch
from pipeline.errors import SchemaError
from pipeline.operator import Operator, Params, Source, SourceParams, register

FRAMES = sch.frames_schema((SIDE, SIDE), "float32")
COMMANDS = sch.commands_schema({"place": "int32", "confidence": "float32", "full_search": "int8"},
                               {"confidence": "margin 0..1", "full_search": "1 = every place searched, 0 = window"})


def dataset(n_places: int, seed: int, folder: str | None) -> dict:
    return load_folders(folder) if folder else synthetic(n_places, seed)


class RouteParams(SourceParams):
    n_places: int = Field(50, ge=2, description="places on the synthetic route")
    seed: int = 0
    traversal: Literal["query", "reference", "calibration"] = "query"
    folder: str | None = Field(None, description="user dataset root with reference/ and query/ (replaces the synthetic route)")
    rate_hz: float = Field(10.0, gt=0, description="frame rate of the replayed traversal")


@register
class PlaceRoute(Source):
    """Replays one traversal of a route as patch-normalised 28x28 frames, one per batch."""

    name = "place_route"
    Params = RouteParams
    outputs = {"out": "frames"}

    def schemas(self, inputs):
        return {"out": FRAMES}

    def generate(self):
        p = self.params
        imgs = dataset(p.n_places, p.seed, p.folder)[p.traversal]
        for i, img in enumerate(imgs):
            yield sch.frames_batch([round(i * 1e6 / p.rate_hz)], img[None], FRAMES)


class EnsembleParams(Params):
    n_places: int = Field(50, ge=2, description="places of the synthetic route to learn")
    seed: int = 0
    folder: str | None = Field(None, description="user dataset root (reference/ learnt, calibration held out)")
    places_per_module: int = Field(10, ge=2)
    n_neurons: int = Field(80, ge=4, description="excitatory neurons per module")
    epochs: int = Field(8, ge=1)
    jitter_px: int = Field(1, ge=0, description="also train on references shifted by this many pixels")
    query: Literal["rate", "spiking"] = Field("rate", description="rate-coded drive (fast, not spiking) or an "
                                             "integrate-and-fire run read out from spikes only")
    spike_steps: int = Field(32, ge=1, description="spiking query: simulated steps per frame")
    model: str | None = Field(None, description="load this model file (operators.control.place.model) instead "
                              "of training at setup")
    save_model: str | None = Field(None, description="after training at setup, write the model file here")
    readout: Literal["mean", "max"] = Field("max", description="place score: best neuron or mean of its neurons")
    workers: int = Field(0, ge=0, description="0 = modules in-process, N = N Ray actors")
    removal: bool = Field(True, description="remove hyperactive neurons (calibrated)")
    sequence_k: int = Field(1, ge=1, description="sequence matching over the last k frames")
    search: Literal["window", "full"] = Field("window", description="window: search near the last confident place, "
                                              "full search on low score; full: every place, every frame")
    window_modules: int = Field(2, ge=1, description="modules searched either side of the last place's module")
    window_keep: float = Field(0.9, gt=0, le=1, description="fraction of calibration frames the window threshold keeps")
    sure_precision: float = Field(0.9, gt=0, le=1, description="calibration precision a full-search match needs "
                                  "to centre the next window")
    refresh_every: int = Field(0, ge=0, description="also a full search after this many windowed frames (0 = never)")
    lost_detector: bool = Field(True, description="hold the window through unsure answers until a calibrated "
                                "CUSUM says lost (off: an unsure or low-scoring answer means a full search)")
    lost_false_alarm: float = Field(0.01, ge=0, lt=1, description="fraction of tracked calibration frames the "
                                    "lost-detector may call lost")


@register
class PlaceEnsemble(Operator):
    """Frames in, best place out: every module scores every frame; the best neuron's place wins."""

    name = "place_ensemble"
    Params = EnsembleParams
    inputs = {"in": "frames"}
    outputs = {"out": "commands"}

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self._ens = None
        self._hist: list[np.ndarray] = []
        self._track = tracking.Track()
        self._win = None
        self._n = 0

    def schemas(self, inputs):
        shape = sch.fact(inputs["in"], "shape")
        if shape is not None and tuple(shape) != (SIDE, SIDE):
            raise SchemaError(f"{self.node}: place_ensemble takes {SIDE}x{SIDE} frames, got {tuple(shape)}")
        return {"out": COMMANDS}

    def setup(self):
        p = self.params
        if p.model:
            self._use(*self._load(p.model))
            return
        d = dataset(p.n_places, p.seed, p.folder)
        mp = ModuleParams(n_neurons=p.n_neurons, epochs=p.epochs, jitter_px=p.jitter_px, query=p.query,
                          readout=p.readout, spike_steps=p.spike_steps)
        self._ens = Ensemble.fit(d["reference"], d["calibration"], d["calibration_places"], p.places_per_module,
                                 mp, p.workers, p.seed)
        self._n = len(d["reference"])
        if p.search == "window":
            cal, cal_places = d["calibration"], d["calibration_places"]
            win = tracking.Window(p.window_modules, p.places_per_module, refresh_every=p.refresh_every)
            self._win = tracking.calibrated(self._ens, cal, cal_places, win, self._n, p.window_keep, p.sure_precision,
                                            p.lost_false_alarm if p.lost_detector else None, p.removal)
        if p.save_model:
            from operators.control.place import model

            model.save(p.save_model, self._ens.modules(), getattr(self._ens, "cut", 10**9), self._win,
                       {"n_places": p.n_places, "seed": p.seed, "folder": p.folder})

    def _load(self, path: str) -> tuple[Ensemble, tracking.Window | None, int]:
        """Read and check a model file completely; ModelError (the old model stays) on any fault."""
        from operators.control.place import model
        from pipeline.errors import ModelError

        modules, cut, win, _ = model.load(path, SIDE * SIDE)
        if self.params.search == "window" and win is None:
            raise ModelError(f"place model '{path}': no windowed-search calibration, and this node has search: window")
        ens = Ensemble.of(modules)
        ens.cut = cut
        return ens, (win if self.params.search == "window" else None), sum(len(m.places) for m in modules)

    def _use(self, ens: Ensemble, win, n: int) -> None:
        old = self._ens
        self._ens, self._win, self._n = ens, win, n
        self._track, self._hist = tracking.Track(), []
        if old is not None and old is not ens:
            old.close()

    def swap_model(self, path: str, version: str) -> bool:
        """Switch to the place model at `path` (see `operators.control.place.model`), loaded and
        checked completely first; a ModelError keeps the current model. The search track and
        the sequence history start afresh (place ids may mean other places in the new model)."""
        ens, win, n = self._load(path)
        self._use(ens, win, n)
        self.model_version = version
        return True

    def _scores(self, frames) -> tuple[np.ndarray, np.ndarray]:
        if self._win is None:
            s = self._ens.scores(frames, self.params.removal)
            return s, np.ones(len(s), np.int8)
        rows, full = [], []
        for img in frames:
            row, self._track, was_full = tracking.search(self._ens, img, self._track, self._win, self._n,
                                                         self.params.removal)
            rows.append(row)
            full.append(was_full)
        return np.array(rows), np.array(full, np.int8)

    def process(self, port, batch):
        s, full = self._scores(sch.frames_view(batch))
        z = (s - s.mean(axis=1, keepdims=True)) / np.maximum(s.std(axis=1, keepdims=True), 1e-9)
        rows = []
        for row in z:
            self._hist = (self._hist + [row])[-self.params.sequence_k:]
            acc = np.zeros_like(row)
            for j, past in enumerate(reversed(self._hist)):  # place p now was place p - j, j frames ago
                acc[j:] += past[: len(row) - j]
            rows.append(acc / len(self._hist))
        place, conf = confidence(np.array(rows))
        return sch.commands_batch(sch.column(batch, "t"), COMMANDS, place=place.astype(np.int32),
                                  confidence=conf.astype(np.float32), full_search=full)

    def state(self):
        """Sequence history and search track (the trained ensemble is rebuilt by setup from params)."""
        return {"history": [row.tolist() for row in self._hist], "track": list(self._track)}

    def restore(self, state):
        self._hist = [np.asarray(row) for row in state["history"]]
        self._track = tracking.Track(*state.get("track", ()))

    def close(self):
        if self._ens is not None:
            self._ens.close()


class LocalisationParams(Params):
    threshold: float = Field(0.1, ge=0, le=1, description="below this confidence the answer is 'not sure'")


@register
class Localisation(Operator):
    """The robot's localiser: keeps the latest place, and says 'not sure' below the threshold."""

    name = "localisation"
    Params = LocalisationParams
    inputs = {"in": "commands"}
    outputs = {}

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.places: list[int] = []
        self.confidences: list[float] = []
        self.full_searches = 0

    def schemas(self, inputs):
        names = set(inputs["in"].names)
        if not {"place", "confidence"} <= names:
            raise SchemaError(f"{self.node}: localisation needs 'place' and 'confidence' columns, got {sorted(names)}")
        return {}

    def process(self, port, batch):
        self.places.extend(sch.column(batch, "place").tolist())
        self.confidences.extend(sch.column(batch, "confidence").tolist())
        if "full_search" in batch.schema.names:
            self.full_searches += int(sch.column(batch, "full_search").sum())

    def state(self):
        return {"places": self.places, "confidences": self.confidences, "full_searches": self.full_searches}

    def restore(self, state):
        self.places, self.confidences = list(state["places"]), list(state["confidences"])
        self.full_searches = int(state.get("full_searches", 0))

    def result(self):
        sure = [c >= self.params.threshold for c in self.confidences]
        return {"frames": len(self.places), "not_sure": int(len(sure) - sum(sure)), "full_searches": self.full_searches,
                "places": [p if s else None for p, s in zip(self.places, sure, strict=True)],
                "confidences": [round(c, 4) for c in self.confidences],
                "last": (self.places[-1] if sure[-1] else "not sure") if sure else None}
