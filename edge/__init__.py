"""What runs on a robot: the agent, device backends, ZeroMQ links, watchdog."""

# Importing the package registers its operators (the `reflexarc.operators` entry point).
from edge import links, offload, watchdog  # noqa: F401
