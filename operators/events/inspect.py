"""`reflexarc inspect FILE` for event files: streams, sensor size, counts, rates, gaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import DataError

SUFFIXES = {".aedat4": "aedat4", ".raw": "evt", ".dat": "dat", ".es": "es", ".csv": "csv"}


def _summary(t_chunks: list[np.ndarray], width: int, height: int) -> dict:
    t = np.concatenate(t_chunks) if t_chunks else np.empty(0, np.int64)
    n = len(t)
    out = {"sensor": [int(width), int(height)], "events": int(n)}
    if n == 0:
        return out
    span_us = int(t[-1] - t[0])
    out.update({"t_first_us": int(t[0]), "t_last_us": int(t[-1]), "duration_s": span_us / 1e6,
                "mean_rate_meps": n / max(span_us, 1)})
    # peak rate over 1 ms bins; the largest time gap between consecutive events
    bins = np.bincount((t - t[0]) // 1000)
    out["peak_rate_meps_1ms"] = float(bins.max()) / 1000.0
    gaps = np.diff(t)
    if len(gaps):
        i = int(np.argmax(gaps))
        out["max_gap_us"] = int(gaps[i])
        out["max_gap_at_us"] = int(t[i])
        out["backwards_steps"] = int((gaps < 0).sum())
    return out


def inspect_file(path) -> dict | None:
    """Describe an event file, or None when it is not an event format this package reads."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        return None
    if not path.exists():
        raise DataError(f"'{path}' does not exist")
    if kind == "aedat4":
        import aedat

        try:
            dec = aedat.Decoder(str(path))
            streams = dec.id_to_stream()
        except RuntimeError as exc:
            raise DataError(f"cannot read AEDAT4 file '{path}': {exc}") from None
        counts = {i: 0 for i in streams}
        t_chunks, errors, packets = [], [], 0
        ev_ids = sorted(i for i, s in streams.items() if s["type"] == "events")
        while True:
            try:
                pk = next(dec)
            except StopIteration:
                break
            except RuntimeError as exc:
                errors.append(f"packet {packets}: {exc}")
                packets += 1
                if "fill whole buffer" in str(exc) or len(errors) > 16:
                    break
                continue
            packets += 1
            sid = pk["stream_id"]
            if "events" in pk:
                counts[sid] += len(pk["events"])
                if ev_ids and sid == ev_ids[0]:
                    t_chunks.append(pk["events"]["t"].astype(np.int64))
            else:
                counts[sid] += 1
        w, h = (streams[ev_ids[0]]["width"], streams[ev_ids[0]]["height"]) if ev_ids else (0, 0)
        out = {"format": "AEDAT4", "path": str(path), "packets": packets,
               "streams": [{"id": i, **s, "items": counts[i]} for i, s in sorted(streams.items())]}
        out.update(_summary(t_chunks, w, h))
        if errors:
            out["errors"] = errors
        return out
    import faery

    try:
        stream = faery.events_stream_from_file(path)
        w, h = stream.dimensions()
        t_chunks, x_max, y_max = [], -1, -1
        for arr in stream:
            t_chunks.append(arr["t"].astype(np.int64))
            if len(arr):
                x_max, y_max = max(x_max, int(arr["x"].max())), max(y_max, int(arr["y"].max()))
    except Exception as exc:  # faery's decoders raise bare exceptions
        raise DataError(f"cannot read event file '{path}': {exc}") from None
    geometry = None
    if kind == "evt":  # older RAW headers name only the plugin; faery then guesses 1280x720
        from operators.events.sources import prophesee_geometry, raw_header

        header = raw_header(path)
        geometry = prophesee_geometry(header)
        if geometry:
            (w, h), geometry = geometry
    if kind == "csv":  # CSV carries no sensor size: report the extent of the data
        w, h = x_max + 1, y_max + 1
    out = {"format": kind.upper(), "path": str(path), "streams": [{"id": 0, "type": "events", "width": w, "height": h}]}
    if geometry:
        out["sensor_from"] = geometry
    if kind != "csv" and (x_max >= w or y_max >= h):
        out["errors"] = [f"events outside the {w}x{h} sensor (max x {x_max}, max y {y_max})"]
    out.update(_summary(t_chunks, w, h))
    if kind == "csv":
        out["sensor_from_data"] = True
    return out
