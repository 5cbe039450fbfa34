"""CurveZMQ key pairs for a fleet: the manager's, an admin's, and one per robot.

A keys folder holds `NAME.key` (public) and `NAME.key_secret` (secret, mode 0600) made by
`zmq.auth.create_certificates`, plus `authorized/` with the public keys the manager accepts.
Agents hold their own secret key and only the manager's public key.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq
import zmq.auth

from pipeline.errors import ConfigError

AUTHORIZED = "authorized"


def existing(folder: str | Path, names) -> list[str]:
    """Which of `names` already have a key pair (or an authorized key) in `folder`."""
    folder = Path(folder)
    return [n for n in names if any(p.exists() for p in (folder / f"{n}.key", folder / f"{n}.key_secret",
                                                         folder / AUTHORIZED / f"{n}.key"))]


def _check_new(folder: str | Path, names, force: bool) -> None:
    from edge.wire import valid_name

    bad = [n for n in names if not valid_name(n)]
    if bad:
        raise ConfigError(f"key names {bad}: use [A-Za-z0-9._-], 1-64 characters, not dots alone")
    taken = existing(folder, names)
    if taken and not force:
        raise ConfigError(f"'{folder}' already holds keys for {', '.join(taken)}: regenerating them would lock out "
                          "every robot that pins or holds them; pass --force to replace them")


def make_pair(folder: str | Path, name: str, authorize: bool = False, force: bool = False) -> tuple[Path, Path]:
    """Create NAME.key / NAME.key_secret in `folder` (and authorize the public key).

    Refuses (ConfigError) to replace an existing pair unless `force`.
    """
    _check_new(folder, [name], force)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    if authorize:
        (folder / AUTHORIZED).mkdir(exist_ok=True)
        shutil.copy(public, folder / AUTHORIZED / f"{name}.key")
    return Path(public), Path(secret)


def init_fleet(folder: str | Path, agents: list[str] = (), force: bool = False) -> dict[str, Path]:
    """Keys for a manager, an admin (the `fleet` CLI) and each named agent.

    Refuses, before writing anything, when any of them exists already, unless `force`.
    """
    names = ["manager", "admin", *agents]
    _check_new(folder, names, force)
    made = {"manager": make_pair(folder, "manager", force=True)[0],
            "admin": make_pair(folder, "admin", authorize=True, force=True)[0]}
    for name in agents:
        made[name] = make_pair(folder, name, authorize=True, force=True)[0]
    return made


def load_public(path: str | Path) -> bytes:
    """The z85 public key in a `.key` or `.key_secret` file."""
    path = Path(path)
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CurveZMQ key '{path}': {exc}") from None
    return public


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a `.key_secret` file."""
    path = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CurveZMQ key '{path}': {exc}") from None
    if secret is None:
        raise ConfigError(f"'{path}' holds no secret key (expected a NAME.key_secret file)")
    return public, secret


def authorized(folder: str | Path) -> dict[bytes, str]:
    """Public keys the manager accepts: z85 key -> name (the file's stem)."""
    keys = {}
    for path in sorted((Path(folder) / AUTHORIZED).glob("*.key")):
        keys[load_public(path)] = path.stem
    return keys


def client_socket(ctx: zmq.Context, kind: int, own_secret: str | Path, server_public: str | Path) -> zmq.Socket:
    """A socket that talks CURVE to one server whose public key it pins."""
    pub, sec = load_secret(own_secret)
    sock = ctx.socket(kind)
    sock.curve_publickey, sock.curve_secretkey = pub, sec
    sock.curve_serverkey = load_public(server_public)
    sock.linger = 0
    return sock


def server_socket(ctx: zmq.Context, kind: int, own_secret: str | Path) -> zmq.Socket:
    """A CURVE server socket (pair it with a `KeyGate` so only known clients get in)."""
    pub, sec = load_secret(own_secret)
    sock = ctx.socket(kind)
    sock.curve_secretkey, sock.curve_publickey = sec, pub
    sock.curve_server = True
    sock.linger = 0
    return sock


class KeyGate:
    """ZAP for CURVE: admits the listed public keys, refuses and counts the rest."""

    def __init__(self, ctx: zmq.Context, known: dict[bytes, str]):
        from zmq.auth.thread import ThreadAuthenticator

        self.known = dict(known)
        self.refused = 0
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve_callback("*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.known:
            return True
        self.refused += 1
        return False

    def stop(self) -> None:
        self.auth.stop()
