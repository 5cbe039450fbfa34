"""Joining a Ray cluster or starting a local one: the one helper every Ray user here calls.

`reflexarc run --executor ray`, `reflexarc brainsim` and `reflexarc evolve` all go
through `ray_session`: with an address (the argument, a config's `ray: {address: ...}`,
or `RAY_ADDRESS`) it joins that cluster and never passes `num_cpus` (a joined cluster
has its own resources); without one it starts a local session. It shuts down only what
it started: a session that was already up is left as it is, and leaving a cluster we
joined only disconnects this driver, the cluster keeps running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pipeline.errors import ClusterError, ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """The Ray session a run uses: whether it joined a cluster, and whether it owns the session."""

    address: str | None  # what was joined (None: a local session was started or was already up)
    started: bool  # this helper called ray.init (and will call ray.shutdown)
    local: bool  # a single-machine session this process started (its raylet ends with it)


def resolve_address(address: str | None = None, config: dict | None = None) -> str | None:
    """The cluster to join: the argument, then the config's `ray.address`, then RAY_ADDRESS."""
    if address:
        return str(address)
    ray_cfg = (config or {}).get("ray") or {}
    if isinstance(ray_cfg, dict) and ray_cfg.get("address"):
        return str(ray_cfg["address"])
    return os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None = None, *, config: dict | None = None, num_cpus: int | None = None,
            log_to_driver: bool = False) -> Session:
    """Use the running Ray session, join the cluster at `address`, or start a local one.

    For callers that hold the session across calls (a simulation's build and close);
    pair with `disconnect`. `num_cpus` sizes a local session only (default: this
    machine's cores).
    """
    import ray

    if ray.is_initialized():
        return Session(None, started=False, local=False)
    target = resolve_address(address, config)
    # a Ray error that this process survived must not print a traceback block later on
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    try:
        if target:
            ray.init(address=target, include_dashboard=False, log_to_driver=log_to_driver)
        else:  # "local": never the cluster a `ray start` on this machine left in /tmp/ray (Ray's default)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False,
                     log_to_driver=log_to_driver)
    except ConnectionError as exc:
        raise ClusterError(f"cannot join the Ray cluster at '{target}': {exc}{_auth_hint()}") from None
    except ValueError as exc:  # malformed address, or options a joined cluster refuses
        raise ConfigError(f"ray address '{target}': {exc}") from None
    return Session(target, started=True, local=target is None)


def _auth_hint() -> str:
    """Why joining may have failed: Ray >= 2.59 starts `ray start` clusters with token
    authentication, and a client only sends its token when RAY_AUTH_MODE=token is set."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return " (RAY_AUTH_MODE=token is set: check that RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token holds the cluster's token)"
    return (" (if the cluster uses token authentication, as `ray start` does by default since Ray 2.59, set "
            "RAY_AUTH_MODE=token; the token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")


def disconnect(session: Session | None) -> None:
    """Undo `connect`: shut down a local session it started, leave a cluster it joined
    (the cluster runs on), and leave alone a session that was already up."""
    if session is not None and session.started:
        import ray

        ray.shutdown()


@contextmanager
def ray_session(address: str | None = None, *, config: dict | None = None, num_cpus: int | None = None,
                log_to_driver: bool = False) -> Iterator[Session]:
    """`connect` for the length of a `with` block."""
    session = connect(address, config=config, num_cpus=num_cpus, log_to_driver=log_to_driver)
    try:
        yield session
    finally:
        disconnect(session)


def alive_nodes() -> list[dict]:
    """The live nodes of the joined cluster: id, address, resources, labels."""
    import ray

    return [
        {"id": n["NodeID"], "ip": n.get("NodeManagerAddress"), "resources": n.get("Resources", {}),
         "labels": {k: v for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/")}}
        for n in ray.nodes()
        if n.get("Alive")
    ]
