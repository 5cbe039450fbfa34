"""What runs on a Ray cluster: fleet manager, brain simulation, evolution and training."""
