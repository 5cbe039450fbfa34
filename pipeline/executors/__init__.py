"""Executors, one module each behind one protocol (`base.Executor`) and a registry.

- `local`: one process, deterministic topological push (`local.py`);
- `ray`: one Ray actor per node or fused group, driven by actor calls: backpressure
  policies and crash recovery (`ray_calls.py`);
- `ray-compiled`: the same actors as a Ray Compiled Graph (`ray_compiled.py`);
- `ray-shm`: the same actors linked by shared-memory rings on a node and sockets between
  nodes (`ray_shm.py`).

What the Ray executors share (the actor, the placement, the driver's wave loop, joining
a cluster) lives in `actors.py` and `session.py`.
"""

from pipeline.executors.base import Executor, Outcome, get, names, register

BUILTIN = ("local", "ray", "ray-compiled", "ray-shm")

__all__ = ["BUILTIN", "Executor", "Outcome", "get", "names", "register"]
