"""One exception hierarchy for reflexarc: every message names what and where."""

from __future__ import annotations

from dataclasses import dataclass


class ReflexarcError(Exception):
    """Base of every error reflexarc raises on purpose; the CLI prints it as a sentence."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (node, key) and what."""

    node: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = ".".join(p for p in (self.node, self.key) if p)
        return f"{where}: {self.message}" if where else self.message


class ConfigError(ReflexarcError):
    """A pipeline config (YAML or Python) is malformed or fails validation.

    Carries every problem found, not only the first.
    """

    exit_code = 2

    def __init__(self, problems: list[Problem] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [Problem(None, None, problems)]
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            text = f"{head}{self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            text = f"{head}{len(self.problems)} problems:\n{lines}"
        super().__init__(text)

    def __reduce__(self):
        return (ConfigError, (self.problems, self.source))


class SchemaError(ReflexarcError):
    """A batch or a port's schema is not what a stream kind or an operator expects."""

    exit_code = 2


class OperatorError(ReflexarcError):
    """An operator raised while the pipeline ran; names the node and the batch."""

    def __init__(self, node: str, message: str, seq: int | None = None):
        self.node = node
        self.seq = seq
        self.reason = message
        at = f" at batch {seq}" if seq is not None else ""
        super().__init__(f"node '{node}' failed{at}: {message}")

    def __reduce__(self):  # crosses process boundaries (Ray) intact
        return (OperatorError, (self.node, self.reason, self.seq))

    @classmethod
    def of(cls, node: str, exc: BaseException, doing: str = "", seq: int | None = None) -> OperatorError:
        """`exc`, raised by `node`, as one: our own errors keep their message, others say their type."""
        if isinstance(exc, ReflexarcError):
            return cls(node, str(exc), seq)
        return cls(node, f"{doing}{type(exc).__name__}: {exc}", seq)


class DataError(ReflexarcError):
    """Input data (a file, a packet, a frame) is corrupt or does not fit the config."""


class ClusterError(ReflexarcError):
    """A Ray cluster cannot be reached, cannot meet a placement, or lost a node mid-run."""


class LinkError(ReflexarcError):
    """A network link (ZeroMQ, UDP, LSL) failed or a peer misbehaved."""


class ModelError(ReflexarcError):
    """A model file (a rollout, a NIR graph, weights) cannot be read or does not fit its operator."""
