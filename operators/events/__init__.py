"""Event cameras: sources (AEDAT4, other formats, UDP, DV network streams, a synthetic camera) and Numba kernels.

Importing this package registers its operators.
"""

from operators.events import dv_net, ops, preview, sources, synthetic  # noqa: F401  (register the operators)
from operators.events.synthetic import GESTURES, gesture_events, gesture_recording, write_aedat4

__all__ = ["GESTURES", "gesture_events", "gesture_recording", "write_aedat4"]
