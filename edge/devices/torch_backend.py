"""Torch backends: the reference CPU backend and CUDA where a GPU is present."""

from __future__ import annotations

import numpy as np
import torch

from edge.devices.base import Backend, register_backend


@register_backend
class TorchCPU(Backend):
    """The network in float32 on the CPU, T steps per call (layer by layer over time)."""

    name = "torch-cpu"
    device = "cpu"

    def __init__(self, network, threads: int | None = 1, delta: bool = False):
        # batch-1 streaming is latency-bound: on a shared machine extra intra-op threads cost far more
        # than they give (measured 4 ms vs 230 ms per step under load), so one thread unless asked
        super().__init__(network, threads=threads, delta=delta)
        if threads:
            torch.set_num_threads(int(threads))
        self.delta = delta
        self.network = network.to(self.device).eval()
        self.counts = {"steps": 0, "input_nonzero": 0, "delta_nonzero": 0, "input_elements": 0}

    def initial_state(self):
        return self.network.initial_state(1, self.device)

    def run(self, xs: np.ndarray, state):
        with torch.inference_mode():
            x = torch.as_tensor(np.array(xs, dtype=np.float32, copy=True)).to(self.device).unsqueeze(1)
            if self.delta:
                y, state, values = self.network.run(x, state, record=True, delta=True)
                self.counts["delta_nonzero"] += int(torch.count_nonzero(values["__delta_input__"]))
            else:
                y, state = self.network.run(x, state)
            self.counts["steps"] += len(xs)
            self.counts["input_nonzero"] += int(torch.count_nonzero(x))
            self.counts["input_elements"] += x.numel()
            return y[:, 0].float().cpu().numpy(), state

    def report(self) -> dict:
        c = dict(self.counts)
        if self.delta and c["input_elements"]:
            # the first synaptic layers' work is proportional to the inputs they are sent
            c["delta_skipped_vs_dense"] = 1 - c["delta_nonzero"] / c["input_elements"]
            c["delta_skipped_vs_event_driven"] = 1 - c["delta_nonzero"] / max(c["input_nonzero"], 1)
        return c


@register_backend
class TorchCUDA(TorchCPU):
    """The same on the first CUDA device."""

    name = "torch-cuda"
    device = "cuda"

    @classmethod
    def available(cls):
        return None if torch.cuda.is_available() else "no CUDA device is visible to torch"
