"""Shared fixtures: a Ray session per test module that asks for one."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
