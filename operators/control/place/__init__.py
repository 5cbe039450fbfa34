"""Robot place recognition with ensembles of compact, region-specific spiking networks.

Importing this package registers `place_route`, `place_ensemble` and `localisation`.
"""

from operators.control.place import ops  # noqa: F401  (registers the operators)
from operators.control.place.ensemble import Ensemble, metrics, sad_scores, sequence_scores
from operators.control.place.network import Module, ModuleParams
from operators.control.place.route import Appearance, Route, load_folders, patch_normalise, synthetic

__all__ = ["Appearance", "Ensemble", "Module", "ModuleParams", "Route", "load_folders", "metrics",
           "patch_normalise", "sad_scores", "sequence_scores", "synthetic"]
