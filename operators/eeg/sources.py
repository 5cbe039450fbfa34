"""EEG sources: EDF/BDF files (pyedflib), Lab Streaming Layer inlets (pylsl), synthetic."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from operators.eeg.synth import SynthSpec, synth_eeg, write_edf
from pipeline import schemas as sch
from pipeline.errors import DataError, LinkError
from pipeline.operator import Source, SourceParams, register

log = logging.getLogger(__name__)


class EdfParams(SourceParams):
    path: str = Field(..., description="EDF/EDF+/BDF file")
    channels: list[str] | None = Field(None, description="channels to read (all when unset); "
                                       "each must be in the file")
    rate_hz: float | None = Field(None, gt=0, description="expected sampling rate; a file that "
                                  "differs is an error")
    batch_s: float = Field(0.1, gt=0, description="seconds of signal per batch")
    synthesize_if_missing: bool = Field(False, description="write a synthetic SSVEP recording "
                                        "to `path` when it does not exist")
    seed: int = 0


def _open_edf(path: Path):
    import pyedflib

    if not path.exists():
        raise DataError(f"EDF file '{path}' does not exist")
    try:
        return pyedflib.EdfReader(str(path))
    except OSError as exc:
        raise DataError(f"'{path}' is not a readable EDF/BDF file ({exc})") from None


@register
class EdfSource(Source):
    """Streams an EDF/BDF recording as `samples` batches in µV, paced or flat out."""

    name = "edf_source"
    outputs = {"out": "samples"}
    Params = EdfParams

    def _prepare(self) -> None:
        p = self.params
        path = Path(p.path)
        if not path.exists() and p.synthesize_if_missing:
            spec = SynthSpec(seed=p.seed)
            if p.channels:
                spec = SynthSpec(seed=p.seed, channels=tuple(p.channels))
            if p.rate_hz:
                spec = SynthSpec(**{**spec.__dict__, "rate_hz": p.rate_hz})
            write_edf(synth_eeg(spec), path)
            log.info("wrote a synthetic SSVEP recording to %s", path)

    def _header(self):
        with _open_edf(Path(self.params.path)) as f:
            labels = f.getSignalLabels()
            rates = f.getSampleFrequencies()
            dims = [f.getPhysicalDimension(i) for i in range(f.signals_in_file)]
        p = self.params
        wanted = p.channels or labels
        missing = [c for c in wanted if c not in labels]
        if missing:
            raise DataError(f"EDF file '{p.path}' has no channel(s) {missing}; it has {labels} "
                            f"({len(labels)} channels) but the config asks for {len(wanted)}")
        idx = [labels.index(c) for c in wanted]
        chan_rates = {float(rates[i]) for i in idx}
        if len(chan_rates) != 1:
            raise DataError(f"EDF file '{p.path}': channels {wanted} have different rates "
                            f"{sorted(chan_rates)} Hz; pick channels of one rate")
        rate = chan_rates.pop()
        if p.rate_hz is not None and abs(rate - p.rate_hz) > 1e-6:
            raise DataError(f"EDF file '{p.path}' is sampled at {rate} Hz, the config expects "
                            f"rate_hz={p.rate_hz}")
        return idx, list(wanted), rate, [dims[i] for i in idx]

    def schemas(self, inputs):
        p = self.params
        if p.channels and p.rate_hz:
            return {"out": sch.samples_schema(p.channels, p.rate_hz, "uV")}
        self._prepare()
        _, chans, rate, _ = self._header()
        return {"out": sch.samples_schema(chans, rate, "uV")}

    def setup(self):
        self._prepare()
        self._idx, self._chans, self._rate, dims = self._header()
        self._scale = np.array([_to_uv(d) for d in dims])

    def generate(self):
        schema = sch.samples_schema(self._chans, self._rate, "uV")
        step = max(1, int(round(self.params.batch_s * self._rate)))
        with _open_edf(Path(self.params.path)) as f:
            n = int(min(f.getNSamples()[i] for i in self._idx))
            for start in range(0, n, step):
                m = min(step, n - start)
                data = np.empty((m, len(self._idx)))
                for j, i in enumerate(self._idx):
                    data[:, j] = f.readSignal(i, start, m) * self._scale[j]
                t = np.round((start + np.arange(m)) * 1e6 / self._rate).astype(np.int64)
                yield sch.samples_batch(t, data, schema)


def _to_uv(dim: str) -> float:
    dim = (dim or "").strip()
    return {"V": 1e6, "mV": 1e3, "nV": 1e-3}.get(dim, 1.0)


class LslParams(SourceParams):
    stream_name: str | None = Field(None, description="LSL stream name to resolve")
    stream_type: str = Field("EEG", description="LSL stream type (used when no name is given)")
    channels: list[str] = Field(..., min_length=1, description="expected channel labels, in order")
    rate_hz: float = Field(..., gt=0, description="expected nominal rate")
    resolve_timeout_s: float = Field(5.0, gt=0)
    stall_s: float = Field(0.5, gt=0, description="no data this long counts as a stall")
    vanish_s: float = Field(2.0, gt=0, description="no data this long: the stream is gone")
    on_vanish: str = Field("error", pattern="^(error|end)$",
                           description="raise a LinkError (safe stop) or end the stream")
    duration_s: float | None = Field(None, gt=0, description="stop after this much signal")
    clock_every_s: float = Field(1.0, gt=0, description="how often to re-read the clock offset")


@register
class LslSource(Source):
    """Reads an LSL stream, following its clock offset; stalls are counted, loss is loud."""

    name = "lsl_source"
    outputs = {"out": "samples"}
    Params = LslParams

    # Stalls and loss are judged on this clock; a test swaps in a counting one so that the
    # numbers it checks do not depend on how busy the machine is.
    clock = staticmethod(time.monotonic)

    def __init__(self, params=None, node=None):
        super().__init__(params, node)
        self.stats = {"samples": 0, "chunks": 0, "stalls": 0, "vanished": False,
                      "clock_offset_s": None, "offset_updates": 0}

    def schemas(self, inputs):
        return {"out": sch.samples_schema(self.params.channels, self.params.rate_hz, "uV")}

    def setup(self):
        import pylsl

        p = self.params
        prop, value = ("name", p.stream_name) if p.stream_name else ("type", p.stream_type)
        found = pylsl.resolve_byprop(prop, value, 1, p.resolve_timeout_s)
        if not found:
            raise LinkError(f"no LSL stream with {prop}='{value}' found within {p.resolve_timeout_s} s")
        info = found[0]
        if info.channel_count() != len(p.channels):
            raise DataError(f"LSL stream '{info.name()}' has {info.channel_count()} channels, the "
                            f"config lists {len(p.channels)} ({p.channels})")
        if abs(info.nominal_srate() - p.rate_hz) > 1e-6:
            raise DataError(f"LSL stream '{info.name()}' runs at {info.nominal_srate()} Hz, the "
                            f"config expects rate_hz={p.rate_hz}")
        self._inlet = pylsl.StreamInlet(info, max_buflen=30, recover=False)
        self._inlet.open_stream(timeout=p.resolve_timeout_s)
        self._stream = info.name()

    def close(self):
        inlet = getattr(self, "_inlet", None)
        if inlet is not None:
            inlet.close_stream()
            self._inlet = None

    def _offset(self) -> float:
        import pylsl

        try:
            off = self._inlet.time_correction(timeout=0.5)
        except (pylsl.util.LostError, pylsl.util.TimeoutError):
            return self.stats["clock_offset_s"] or 0.0
        self.stats["clock_offset_s"] = off
        self.stats["offset_updates"] += 1
        return off

    def generate(self):
        import pylsl

        p = self.params
        schema = self.schemas({})["out"]
        offset = self._offset()
        next_clock = self.clock() + p.clock_every_s
        last_data = self.clock()
        stalled = False
        limit = None if p.duration_s is None else int(p.duration_s * p.rate_hz)
        while limit is None or self.stats["samples"] < limit:
            try:
                chunk, stamps = self._inlet.pull_chunk(timeout=min(0.1, p.stall_s), max_samples=1024)
            except pylsl.util.LostError:
                chunk, stamps = [], []
                last_data = min(last_data, self.clock() - p.vanish_s)
            now = self.clock()
            if now >= next_clock and len(stamps):
                offset = self._offset()
                next_clock = now + p.clock_every_s
            if len(stamps) == 0:
                idle = now - last_data
                if idle >= p.stall_s and not stalled:
                    stalled = True
                    self.stats["stalls"] += 1
                if idle >= p.vanish_s:
                    self.stats["vanished"] = True
                    msg = f"LSL stream '{self._stream}' vanished: no data for {idle:.1f} s"
                    if p.on_vanish == "error":
                        raise LinkError(msg)
                    log.warning(msg)
                    return
                continue
            stalled = False
            last_data = now
            data = np.asarray(chunk, dtype=np.float32).reshape(len(stamps), -1)
            t = np.round((np.asarray(stamps) + offset) * 1e6).astype(np.int64)
            if limit is not None:
                keep = limit - self.stats["samples"]
                data, t = data[:keep], t[:keep]
            self.stats["samples"] += len(t)
            self.stats["chunks"] += 1
            yield sch.samples_batch(t, data, schema)

    def result(self):
        return dict(self.stats)


class SynthParams(SourceParams):
    seed: int = 0
    n_trials: int = Field(8, ge=1)
    ssvep_uv: float = Field(3.0, ge=0)
    noise_uv: float = Field(8.0, gt=0)
    batch_s: float = Field(0.1, gt=0)
    rate_hz: float = Field(250.0, gt=0)


@register
class EegSynthetic(Source):
    """Synthetic SSVEP EEG (see operators.eeg.synth) with the documented SNR."""

    name = "eeg_synthetic"
    outputs = {"out": "samples"}
    Params = SynthParams

    def _spec(self) -> SynthSpec:
        p = self.params
        return SynthSpec(seed=p.seed, n_trials=p.n_trials, ssvep_uv=p.ssvep_uv,
                         noise_uv=p.noise_uv, rate_hz=p.rate_hz)

    def schemas(self, inputs):
        s = self._spec()
        return {"out": sch.samples_schema(list(s.channels), s.rate_hz, "uV")}

    def generate(self):
        rec = synth_eeg(self._spec())
        schema = self.schemas({})["out"]
        step = max(1, int(round(self.params.batch_s * rec.spec.rate_hz)))
        for start in range(0, len(rec.t_us), step):
            yield sch.samples_batch(rec.t_us[start:start + step], rec.data[start:start + step], schema)
