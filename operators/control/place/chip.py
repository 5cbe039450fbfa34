"""The spiking place query as an `operators.snn` network, run on the neuromorphic emulator.

A trained ensemble's spiking query (`network.if_run`) is one layer: the kept neurons of
every module, each with its mean weight removed (`network.spiking_weights`), as an Affine
map from the 784 input pixels to integrate-and-fire neurons (no leak, reset to zero, one
threshold for all). `place_network` builds it as an `operators.snn.network.Network`
(Affine -> IF), which `operators.snn.nir_io.save` writes as a NIR graph and
`edge.devices.emulator.NeuromorphicEmulator` runs as a chip would: int8 weights (per
tensor), fixed-point membrane, synaptic events and neuron updates counted and turned into
energy with the chip profile's per-operation costs. `chip_scores` reads the output spikes
with the same readout as the float path (count, ties by the first spike; best neuron per
place).
"""

from __future__ import annotations

import numpy as np

from operators.control.place.network import Module, fill_empty, input_spikes, spike_score, spiking_weights


def stacked_spiking(modules: list[Module], removal: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """(n_pixels, n_kept) spiking weights of all modules' kept neurons, each neuron's place
    column (modules in the given order, places of a module consecutive) and the place count."""
    ws, cols, offset = [], [], 0
    for m in modules:
        keep = m.kept(None if removal else 10**9)
        ws.append(spiking_weights(m.w)[:, keep])
        cols.append(offset + m.labels[keep])
        offset += len(m.places)
    w = np.concatenate(ws, axis=1) if ws else np.zeros((0, 0), np.float32)
    return w, (np.concatenate(cols) if cols else np.zeros(0, np.int64)), offset


def place_network(modules: list[Module], removal: bool = True):
    """The spiking query of these modules as an `operators.snn` Network: input -> fc -> if -> output."""
    import torch

    from operators.snn.layers import IF
    from operators.snn.network import Affine, Network

    theta = modules[0].params.spike_threshold
    if theta <= 0:
        raise ValueError("place_network: spike_threshold is not calibrated (Ensemble.calibrate sets it)")
    w, _, _ = stacked_spiking(modules, removal)
    fc = Affine(torch.from_numpy(np.ascontiguousarray(w.T)), None)
    return Network.sequential((w.shape[0],), [("fc", fc), ("if", IF((w.shape[1],), v_threshold=theta, v_reset=0.0))])


def per_place(values: np.ndarray, col: np.ndarray, n_places: int) -> np.ndarray:
    """Best neuron's value per place column; places without a neuron rank last."""
    out = np.full((len(values), n_places), -np.inf)
    for k in range(len(col)):
        np.maximum(out[:, col[k]], values[:, k], out=out[:, col[k]])
    return fill_empty(out, np.isin(np.arange(n_places), col))


def chip_scores(modules: list[Module], imgs: np.ndarray, chip: str = "loihi", removal: bool = True,
                steps: int | None = None) -> tuple[np.ndarray, dict]:
    """Per-place scores of the spiking query run on the emulated chip, and its work per query.

    Each query starts from a rested network (membranes at zero). Returns (n_images,
    n_places) scores in the modules' place order and the emulator's report with
    per-query SynOps, spikes and energy added.
    """
    from edge.devices.emulator import NeuromorphicEmulator

    p = modules[0].params
    steps = steps or p.spike_steps
    net = place_network(modules, removal)
    _, col, n_places = stacked_spiking(modules, removal)
    emu = NeuromorphicEmulator(net, chip)
    spikes = input_spikes(imgs, steps, p.spike_rate)
    count = np.zeros((len(imgs), len(col)), np.int32)
    first = np.full(count.shape, steps + 1, np.int32)
    for q in range(len(imgs)):
        out, _ = emu.run(spikes[:, q].astype(np.float32), emu.initial_state())
        fired = out > 0
        count[q] = fired.sum(axis=0)
        any_ = fired.any(axis=0)
        first[q, any_] = fired.argmax(axis=0)[any_] + 1
    rep = emu.report()
    n = max(len(imgs), 1)
    rep.update({"queries": len(imgs), "steps_per_query": steps, "synops_per_query": rep["synops"] / n,
                "spikes_per_query": rep["spikes"] / n, "energy_uj_per_query": rep["energy_uj"] / n,
                "input_spikes_per_query": float(spikes.sum()) / n, "neurons": int(len(col))})
    return per_place(spike_score(count, first, steps), col, n_places), rep
