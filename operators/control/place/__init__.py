"""Robot place recognition with ensembles of compact, region-specific spiking networks."""
