"""EEG to action: EDF/LSL/synthetic sources, streaming filters, SSVEP decoders, wheelchair sink.

Importing this package registers its operators: `edf_source`, `lsl_source`,
`eeg_synthetic`, `eeg_filter`, `ssvep_decoder`, `wheelchair_sink`.
"""

from operators.eeg.ops import EegFilter, SsvepDecoder, WheelchairSink
from operators.eeg.sources import EdfSource, EegSynthetic, LslSource

__all__ = ["EdfSource", "EegFilter", "EegSynthetic", "LslSource", "SsvepDecoder", "WheelchairSink"]
