"""Shared fixtures: a Ray session per test module that asks for one."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from pipeline.executors.actors import remove_leaked_semaphores, shm_semaphores

    before = shm_semaphores()  # what compiled graphs leave in /dev/shm goes with the session
    # "local": a session of its own, not a cluster another test (or `ray start`) has up on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        remove_leaked_semaphores(before)


@pytest.fixture(scope="module")
def multinode():
    """A two-node cluster (head: resource `head`, label role=head; worker: `camera`, `accel`,
    label role=edge) with this test process connected as its driver."""
    from pipeline.executors.actors import remove_leaked_semaphores, shm_semaphores
    from pipeline.testing import MultiNode

    before = shm_semaphores()
    try:
        with MultiNode.connected() as nodes:
            yield nodes
    finally:
        remove_leaked_semaphores(before)
