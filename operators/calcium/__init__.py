"""Calcium imaging: two-photon sources, motion correction, ROI traces, dF/F, online
OASIS deconvolution, a dynamic functional connectome and a closed-loop trigger.

Importing the package registers its operators: `calcium_tiff`, `calcium_hdf5`,
`calcium_synthetic`, `calcium_motion`, `calcium_traces`, `calcium_dff`,
`calcium_deconv`, `calcium_connectome`, `calcium_trigger`.
"""

from operators.calcium.connectome import Connectome
from operators.calcium.deconv import Deconvolve, deconvolve
from operators.calcium.motion import MotionCorrect
from operators.calcium.rois import DeltaFOverF, RoiTraces
from operators.calcium.sources import Hdf5Source, SyntheticMovieSource, TiffSource
from operators.calcium.synth import Movie, MovieParams, generate, write_hdf5, write_tiff
from operators.calcium.trigger import StimTrigger

__all__ = [
    "Connectome",
    "Deconvolve",
    "DeltaFOverF",
    "Hdf5Source",
    "Movie",
    "MotionCorrect",
    "MovieParams",
    "RoiTraces",
    "StimTrigger",
    "SyntheticMovieSource",
    "TiffSource",
    "deconvolve",
    "generate",
    "write_hdf5",
    "write_tiff",
]
