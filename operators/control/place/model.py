"""The place-recognition model file: a trained ensemble, its labels and its calibration.

One NumPy `.npz` archive (no pickles: `allow_pickle=False` on load) that training writes
(`place_ensemble` with `save_model: PATH`, or `save`) and the operator loads (`model:
PATH`, or a fleet rollout through `PlaceEnsemble.swap_model`):

- `format` "reflexarc.place/1", `meta` (JSON: module parameters, hyperactivity cut,
  windowed-search calibration, input side, places, free-form info such as the training seed);
- per module k: `m{k}.places` (global place ids), `m{k}.w` (n_pixels x n_neurons),
  `m{k}.theta`, `m{k}.labels` (index into its places, -1 = silent), `m{k}.breadth`,
  `m{k}.peak`, `m{k}.seed`.

`load` checks everything before anything is used (readable, format, every array present
with the right shape and dtype kind, finite weights, labels in range, modules in route
order covering 0..n-1 once, input size fitting the upstream port) and raises
`pipeline.errors.ModelError` naming the file and the field.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from operators.control.place.network import Module, ModuleParams
from operators.control.place.tracking import Window
from pipeline.errors import ModelError

FORMAT = "reflexarc.place/1"


def save(path: str | Path, modules: list[Module], cut: int, window: Window | None = None,
         info: dict | None = None) -> Path:
    """Write the modules (in route order), the cut and the search calibration to `path`."""
    path = Path(path)
    if not modules:
        raise ValueError("place model: no modules to save")
    mods = sorted(modules, key=lambda m: int(m.places[0]))
    side = int(round(np.sqrt(mods[0].w.shape[0])))
    win = None
    if window is not None:
        win = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(window).items()}
        win = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in win.items()}
        win["_inf"] = [k for k, v in asdict(window).items() if isinstance(v, float) and not np.isfinite(v)]
        win["_neg"] = [k for k, v in asdict(window).items() if isinstance(v, float) and v == -np.inf]
    meta = {"format": FORMAT, "params": asdict(mods[0].params), "cut": int(cut), "window": win, "side": side,
            "n_places": int(sum(len(m.places) for m in mods)), "modules": len(mods), "info": info or {}}
    arrays = {"format": np.array(FORMAT), "meta": np.array(json.dumps(meta))}
    for k, m in enumerate(mods):
        arrays.update({f"m{k}.places": np.asarray(m.places, np.int64), f"m{k}.w": np.asarray(m.w, np.float64),
                       f"m{k}.theta": np.asarray(m.theta, np.float64), f"m{k}.labels": np.asarray(m.labels, np.int64),
                       f"m{k}.breadth": np.asarray(m.ref_breadth, np.int64),
                       f"m{k}.peak": np.asarray(m.ref_peak if m.ref_peak is not None else np.ones(len(m.labels))),
                       f"m{k}.seed": np.array(int(m.seed))})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # np.savez would append .npz to a name without it
        np.savez_compressed(f, **arrays)
    return path


def load(path: str | Path, n_pixels: int | None = None) -> tuple[list[Module], int, Window | None, dict]:
    """Read and check a model file: (modules in route order, cut, window or None, meta).

    `n_pixels`: the upstream frames' size; a model for another input size is refused.
    """
    path = Path(path)

    def bad(what: str) -> ModelError:
        return ModelError(f"place model '{path}': {what}")

    try:
        z = np.load(path, allow_pickle=False)
        files = set(z.files)
        if "format" not in files or "meta" not in files:
            raise bad("not a place model (no 'format'/'meta' entries)")
        if str(z["format"]) != FORMAT:
            raise bad(f"format '{z['format']}' is not {FORMAT}")
        meta = json.loads(str(z["meta"]))
        data = {name: z[name] for name in files}
    except ModelError:
        raise
    except FileNotFoundError as exc:
        raise bad("no such file") from exc
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError) as exc:
        raise bad(f"unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict):
        raise bad("meta is not a JSON object")
    try:
        known = {f.name for f in fields(ModuleParams)}
        unknown = set(meta["params"]) - known
        if unknown:
            raise bad(f"params has unknown fields {sorted(unknown)}")
        params = ModuleParams(**meta["params"])
        cut, n_mod, n_places = int(meta["cut"]), int(meta["modules"]), int(meta["n_places"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"meta field missing or malformed ({exc})") from exc
    if params.query not in ("rate", "spiking") or params.readout not in ("max", "mean"):
        raise bad(f"params.query '{params.query}' / params.readout '{params.readout}' not supported")
    if params.query == "spiking" and not params.spike_threshold > 0:
        raise bad("params.spike_threshold must be > 0 for a spiking model")
    if n_mod < 1 or cut < 1:
        raise bad(f"modules ({n_mod}) and cut ({cut}) must be >= 1")
    modules, expect = [], 0
    for k in range(n_mod):
        def arr(name, kind, ndim, k=k):
            key = f"m{k}.{name}"
            if key not in data:
                raise bad(f"'{key}' missing")
            a = data[key]
            if a.dtype.kind not in kind or a.ndim != ndim:
                raise bad(f"'{key}' has dtype {a.dtype} and {a.ndim} dimensions (expected kind {kind}, {ndim})")
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise bad(f"'{key}' holds NaN or infinite values")
            return a

        places, w = arr("places", "iu", 1), arr("w", "f", 2)
        theta, labels, breadth, peak = arr("theta", "f", 1), arr("labels", "iu", 1), arr("breadth", "iu", 1), \
            arr("peak", "f", 1)
        seed = int(arr("seed", "iu", 0))
        n = w.shape[1]
        if not (len(theta) == len(labels) == len(breadth) == len(peak) == n):
            raise bad(f"module {k}: weights have {n} neurons but theta/labels/breadth/peak have "
                      f"{len(theta)}/{len(labels)}/{len(breadth)}/{len(peak)}")
        if n_pixels is not None and w.shape[0] != n_pixels:
            raise bad(f"module {k}: weights take {w.shape[0]} pixels but the input frames have {n_pixels}")
        if len(places) == 0 or not np.array_equal(places, np.arange(expect, expect + len(places))):
            raise bad(f"module {k}: places {places[:3].tolist()}... do not continue the route at {expect}")
        if labels.min(initial=0) < -1 or labels.max(initial=-1) >= len(places):
            raise bad(f"module {k}: labels outside -1..{len(places) - 1}")
        expect += len(places)
        modules.append(Module(places, w, theta, labels, breadth, params, cut, seed, peak))
    if expect != n_places:
        raise bad(f"modules cover {expect} places, meta says {n_places}")
    if modules[0].w.shape[0] != int(meta.get("side", 0)) ** 2:
        raise bad(f"weights take {modules[0].w.shape[0]} pixels, meta side {meta.get('side')}")
    window = None
    if meta.get("window"):
        try:
            win = dict(meta["window"])
            inf, neg = set(win.pop("_inf", [])), set(win.pop("_neg", []))
            for key in inf:
                win[key] = -np.inf if key in neg else np.inf
            win["llr"] = tuple(float(v) for v in win.get("llr", ()))
            window = Window(**win)
        except (TypeError, ValueError) as exc:
            raise bad(f"window calibration malformed ({exc})") from exc
    return modules, cut, window, meta
