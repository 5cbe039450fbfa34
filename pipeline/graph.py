"""Pipeline graphs: built from YAML or Python, validated as a whole before anything runs.

A config lists nodes, their operator, params and inputs (see configs/ for examples)::

    name: demo
    nodes:
      camera: {op: synthetic, params: {kind: events, rate_hz: 1e6}}
      count:  {op: count_sink, inputs: {in: camera.out}, latency_budget_ms: 50}

An input is `node.port`, `node` (its only output port), or a mapping
`{from: node.port, policy: block|drop-oldest, capacity: 8}`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml
from pydantic import ValidationError

from pipeline import schemas as sch
from pipeline.errors import ConfigError, Problem
from pipeline.operator import Operator, Source, lookup

Policy = Literal["block", "drop-oldest"]
POLICIES = ("block", "drop-oldest")
NODE_KEYS = {"op", "params", "inputs", "latency_budget_ms", "on_budget_miss", "fuse", "place", "id"}
TOP_KEYS = {"name", "description", "nodes", "record", "executor", "eval", "evolve", "defaults", "ray"}
RAY_KEYS = {"address", "placement_timeout_s"}
PLACE_KEYS = {"resources", "labels", "node"}


@dataclass(frozen=True)
class Edge:
    """One input edge: where it comes from and how it behaves under overload."""

    src: str
    src_port: str
    dst: str
    dst_port: str
    policy: Policy = "block"
    capacity: int = 8

    @property
    def stream(self) -> str:
        return f"{self.src}.{self.src_port}"


@dataclass(frozen=True)
class Placement:
    """Where a node may run on a Ray cluster (`place:`); the local executor ignores it.

    `resources` are Ray custom resources a node must offer (`{camera: 1}`), `labels` node
    labels it must carry (`ray start --labels`), `node` one Ray node id (hex).
    """

    resources: tuple[tuple[str, float], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    node: str | None = None

    @classmethod
    def parse(cls, spec: Any, where: str, problems: list[Problem]) -> Placement | None:
        if spec is None:
            return None
        if not isinstance(spec, dict):
            problems.append(Problem(where, "place", f"must be a mapping with keys {sorted(PLACE_KEYS)}, got {spec!r}"))
            return None
        for key in spec:
            if key not in PLACE_KEYS:
                problems.append(Problem(where, f"place.{key}", f"unknown placement key (expected {', '.join(sorted(PLACE_KEYS))})"))
        resources = spec.get("resources") or {}
        labels = spec.get("labels") or {}
        node = spec.get("node")
        ok = True
        if not isinstance(resources, dict):
            problems.append(Problem(where, "place.resources", f"must map resource names to amounts, got {resources!r}"))
            resources, ok = {}, False
        for name, amount in resources.items():
            if isinstance(amount, bool) or not isinstance(amount, int | float) or amount <= 0:
                problems.append(Problem(where, f"place.resources.{name}", f"must be a positive number, got {amount!r}"))
                ok = False
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                problems.append(Problem(where, f"place.resources.{name}", "is a built-in Ray resource; place by custom resources, labels or node"))
                ok = False
        if not isinstance(labels, dict) or not all(isinstance(v, str | int | float) for v in labels.values()):
            problems.append(Problem(where, "place.labels", f"must map label names to values, got {labels!r}"))
            labels, ok = {}, False
        if node is not None and (not isinstance(node, str) or not node or any(c not in "0123456789abcdef" for c in node.lower())):
            problems.append(Problem(where, "place.node", f"must be a Ray node id (hex), got {node!r}"))
            node, ok = None, False
        if not ok:
            return None
        return cls(tuple(sorted((str(k), float(v)) for k, v in resources.items())),
                   tuple(sorted((str(k), str(v)) for k, v in labels.items())), node.lower() if node else None)

    def describe(self) -> str:
        parts = [f"{k}={v:g}" for k, v in self.resources] + [f"label {k}={v}" for k, v in self.labels]
        if self.node:
            parts.append(f"node {self.node[:12]}")
        return ", ".join(parts) or "anywhere"


@dataclass
class Node:
    """A graph node: an operator instance plus its wiring and run-time contract."""

    id: str
    op: Operator
    inputs: dict[str, Edge] = field(default_factory=dict)
    latency_budget_ms: float | None = None
    on_budget_miss: Literal["count", "safe_state"] = "count"
    fuse: str | None = None
    place: Placement | None = None

    @property
    def is_source(self) -> bool:
        return isinstance(self.op, Source)

    @property
    def is_sink(self) -> bool:
        return not self.op.outputs


class Graph:
    """A validated DAG of operator nodes with the schema of every edge."""

    def __init__(self, name: str = "pipeline", source: str | None = None):
        self.name = name
        self.source = source  # file the graph came from, for error messages
        self.nodes: dict[str, Node] = {}
        self.schemas: dict[tuple[str, str], pa.Schema] = {}
        self.config: dict = {}
        self.order: list[str] = []
        self._built = False
        self._failed: set[str] = set()  # nodes that could not be built (already reported)

    # -- construction from Python --------------------------------------------------
    def add(
        self,
        node_id: str,
        op: str | Operator,
        inputs: dict[str, str | dict] | str | None = None,
        *,
        latency_budget_ms: float | None = None,
        on_budget_miss: str = "count",
        fuse: str | None = None,
        place: dict | None = None,
        **params,
    ) -> str:
        """Add a node (operator by registry name and params, or an instance); returns its id."""
        spec: dict[str, Any] = {"op": op, "params": params, "inputs": inputs or {}}
        if latency_budget_ms is not None:
            spec["latency_budget_ms"] = latency_budget_ms
        spec["on_budget_miss"] = on_budget_miss
        if fuse:
            spec["fuse"] = fuse
        if place:
            spec["place"] = place
        problems: list[Problem] = []
        self._add_spec(node_id, spec, problems)
        if problems:
            raise ConfigError(problems, self.source)
        self._built = False
        return node_id

    # -- construction from a config ------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Graph:
        """Load, override (`node.param=value`) and validate a YAML pipeline."""
        data = read_yaml(path)
        return cls.from_dict(data, source=str(path), overrides=overrides)

    @classmethod
    def from_dict(
        cls, data: Any, source: str | None = None, overrides: list[str] | tuple[str, ...] = ()
    ) -> Graph:
        """Build and validate a graph from a config mapping; every problem is reported."""
        if not isinstance(data, dict):
            raise ConfigError("a pipeline config must be a mapping with a 'nodes' key", source)
        data = copy.deepcopy(data)
        problems: list[Problem] = []
        for key in data:
            if key not in TOP_KEYS:
                problems.append(Problem(None, str(key), f"unknown top-level key (expected {', '.join(sorted(TOP_KEYS))})"))
        _check_ray_key(data.get("ray"), problems)
        nodes = data.get("nodes")
        if isinstance(nodes, list):
            as_map = {}
            for i, spec in enumerate(nodes):
                if not isinstance(spec, dict) or "id" not in spec:
                    problems.append(Problem(f"nodes[{i}]", "id", "every node in a list needs an 'id'"))
                    continue
                as_map[str(spec["id"])] = spec
            nodes = as_map
        if not isinstance(nodes, dict) or not nodes:
            problems.append(Problem(None, "nodes", "missing or empty: list the pipeline's nodes"))
            raise ConfigError(problems, source)
        data["nodes"] = nodes
        apply_overrides(data, overrides, problems)
        graph = cls(str(data.get("name", Path(source).stem if source else "pipeline")), source)
        graph.config = data
        for node_id, spec in nodes.items():
            graph._add_spec(str(node_id), spec, problems)
        record = data.get("record")
        if record is not None and not problems:
            graph._add_record_taps(record, problems)
        graph._validate(problems)
        if problems:
            raise ConfigError(problems, source)
        return graph

    def _add_spec(self, node_id: str, spec: Any, problems: list[Problem]) -> None:
        if not isinstance(spec, dict):
            problems.append(Problem(node_id, None, "a node must be a mapping with an 'op' key"))
            self._failed.add(node_id)
            return
        if node_id in self.nodes:
            problems.append(Problem(node_id, None, "duplicate node id"))
            return
        for key in spec:
            if key not in NODE_KEYS:
                problems.append(Problem(node_id, str(key), f"unknown node key (expected {', '.join(sorted(NODE_KEYS - {'id'}))})"))
        op = spec.get("op")
        self._failed.add(node_id)  # until it is built
        if op is None:
            problems.append(Problem(node_id, "op", "missing: name the operator (see `reflexarc ops`)"))
            return
        if isinstance(op, Operator):
            instance = op
            instance.node = node_id
        else:
            try:
                cls = lookup(str(op))
            except ConfigError as exc:
                problems.append(Problem(node_id, "op", exc.problems[0].message))
                return
            params = spec.get("params") or {}
            if not isinstance(params, dict):
                problems.append(Problem(node_id, "params", f"must be a mapping, got {type(params).__name__}"))
                return
            try:
                instance = cls(cls.Params(**params), node=node_id)
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    got = f" (got {err['input']!r})" if err["type"] != "missing" and "input" in err else ""
                    msg = err["msg"] if err["type"] != "extra_forbidden" else f"unknown parameter of '{cls.name}'"
                    problems.append(Problem(node_id, f"params.{loc}", f"{msg}{got}"))
                return
            except (ValueError, TypeError) as exc:
                problems.append(Problem(node_id, "params", str(exc)))
                return
        self._failed.discard(node_id)
        node = Node(node_id, instance, fuse=spec.get("fuse"), place=Placement.parse(spec.get("place"), node_id, problems))
        budget = spec.get("latency_budget_ms")
        if budget is not None:
            if not isinstance(budget, (int, float)) or budget <= 0:
                problems.append(Problem(node_id, "latency_budget_ms", f"must be a positive number, got {budget!r}"))
            else:
                node.latency_budget_ms = float(budget)
        miss = spec.get("on_budget_miss", "count")
        if miss not in ("count", "safe_state"):
            problems.append(Problem(node_id, "on_budget_miss", f"must be 'count' or 'safe_state', got {miss!r}"))
        else:
            node.on_budget_miss = miss
        inputs = spec.get("inputs") or {}
        if isinstance(inputs, str):
            if len(instance.inputs) != 1:
                problems.append(Problem(node_id, "inputs", f"'{inputs}' is ambiguous: '{instance.name}' has ports {list(instance.inputs)}"))
                inputs = {}
            else:
                inputs = {next(iter(instance.inputs)): inputs}
        if not isinstance(inputs, dict):
            problems.append(Problem(node_id, "inputs", "must map input ports to 'node.port'"))
            inputs = {}
        for port, ref in inputs.items():
            policy, capacity = "block", 8
            if isinstance(ref, dict):
                policy = ref.get("policy", "block")
                capacity = ref.get("capacity", 8)
                extra = set(ref) - {"from", "policy", "capacity"}
                if extra:
                    problems.append(Problem(node_id, f"inputs.{port}", f"unknown edge keys {sorted(extra)}"))
                if policy not in POLICIES:
                    problems.append(Problem(node_id, f"inputs.{port}.policy", f"must be one of {POLICIES}, got {policy!r}"))
                    policy = "block"
                if not isinstance(capacity, int) or capacity < 1:
                    problems.append(Problem(node_id, f"inputs.{port}.capacity", f"must be an integer >= 1, got {capacity!r}"))
                    capacity = 8
                ref = ref.get("from")
            if not isinstance(ref, str) or not ref:
                problems.append(Problem(node_id, f"inputs.{port}", f"must name an upstream 'node.port', got {ref!r}"))
                continue
            src, _, src_port = ref.partition(".")
            node.inputs[str(port)] = Edge(src, src_port, node_id, str(port), policy, capacity)
        self.nodes[node_id] = node

    def _add_record_taps(self, record: Any, problems: list[Problem]) -> None:
        """`record: {dir: DIR, streams: [node.port, ...] | all}` adds recorder sinks."""
        if not isinstance(record, dict) or "dir" not in record:
            problems.append(Problem(None, "record", "must be a mapping with 'dir' (and optional 'streams')"))
            return
        streams = record.get("streams", "all")
        if streams == "all":
            streams = [f"{n.id}.{p}" for n in self.nodes.values() for p in n.op.outputs]
        options = {k: v for k, v in record.items() if k not in ("dir", "streams")}
        self.tap(streams, record["dir"], problems=problems, **options)

    def tap(self, streams: list[str], directory: str | Path, problems: list[Problem] | None = None, **options) -> None:
        """Record the named edges (`node.port`) into a recording folder."""
        own = problems is None
        problems = [] if own else problems
        wired = {}
        for stream in streams:
            src, _, port = stream.partition(".")
            if src not in self.nodes or port not in self.nodes[src].op.outputs:
                problems.append(Problem(None, "record.streams", f"no output '{stream}' in the graph"))
                continue
            wired[stream.replace(".", "__")] = stream
        if wired:
            self._add_spec(
                "__record__",
                {"op": "record", "params": {"dir": str(directory), "streams": list(wired.values()), "config": self.config or None, **options},
                 "inputs": dict(wired)},
                problems,
            )
        if own and problems:
            raise ConfigError(problems, self.source)
        self._built = False

    def replace(self, node_id: str, op: str, params: dict) -> None:
        """Swap a node's operator, keeping its wiring (used by replay to stand in for sources)."""
        old = self.nodes.pop(node_id)
        problems: list[Problem] = []
        self._add_spec(node_id, {"op": op, "params": params, "inputs": {}}, problems)
        if problems:
            self.nodes[node_id] = old
            raise ConfigError(problems, self.source)
        self.nodes[node_id].inputs = old.inputs
        self._built = False

    # -- validation ----------------------------------------------------------------
    def _validate(self, problems: list[Problem]) -> None:
        for node in self.nodes.values():
            declared = node.op.inputs
            for port, edge in node.inputs.items():
                if port not in declared:
                    problems.append(Problem(node.id, f"inputs.{port}", f"'{node.op.name}' has no input port '{port}' (ports: {', '.join(declared) or 'none'})"))
                src = self.nodes.get(edge.src)
                if src is None and edge.src in self._failed:
                    continue
                if src is None:
                    problems.append(Problem(node.id, f"inputs.{port}", f"unknown node '{edge.src}'"))
                    continue
                if not edge.src_port:
                    if len(src.op.outputs) == 1:
                        fixed = Edge(edge.src, next(iter(src.op.outputs)), edge.dst, edge.dst_port, edge.policy, edge.capacity)
                        node.inputs[port] = fixed
                    else:
                        problems.append(Problem(node.id, f"inputs.{port}", f"'{edge.src}' has ports {list(src.op.outputs) or 'none'}: name one as '{edge.src}.PORT'"))
                elif edge.src_port not in src.op.outputs:
                    problems.append(Problem(node.id, f"inputs.{port}", f"'{edge.src}' ({src.op.name}) has no output port '{edge.src_port}' (ports: {', '.join(src.op.outputs) or 'none'})"))
            for port in declared:
                if port not in node.inputs:
                    problems.append(Problem(node.id, "inputs", f"input port '{port}' of '{node.op.name}' is not connected"))
        if problems:
            return
        order = self._topological(problems)
        if problems:
            return
        self.order = order
        for node_id in order:
            node = self.nodes[node_id]
            ins: dict[str, pa.Schema] = {}
            ok = True
            for port, edge in node.inputs.items():
                schema = self.schemas.get((edge.src, edge.src_port))
                if schema is None:
                    ok = False
                    continue
                kind = node.op.inputs[port]
                src_kind = self.nodes[edge.src].op.outputs[edge.src_port]
                if kind != sch.ANY and src_kind != sch.ANY and kind != src_kind:
                    problems.append(Problem(node.id, f"inputs.{port}", f"schema mismatch: '{edge.stream}' is a '{src_kind}' stream, '{node.op.name}.{port}' takes '{kind}'"))
                    ok = False
                    continue
                found = sch.problems(kind, schema)
                if found:
                    problems.append(Problem(node.id, f"inputs.{port}", f"schema mismatch: '{edge.stream}' " + "; ".join(found)))
                    ok = False
                    continue
                ins[port] = schema
            if not ok:
                continue
            try:
                outs = node.op.schemas(ins)
            except Exception as exc:  # an operator's own build-time check
                problems.append(Problem(node.id, None, str(exc)))
                continue
            for port, kind in node.op.outputs.items():
                schema = outs.get(port)
                if schema is None:
                    problems.append(Problem(node.id, f"outputs.{port}", f"operator '{node.op.name}' gave no schema for output '{port}'"))
                    continue
                found = sch.problems(kind, schema)
                if found:
                    problems.append(Problem(node.id, f"outputs.{port}", "; ".join(found)))
                self.schemas[(node.id, port)] = schema
        if not any(n.is_source for n in self.nodes.values()):
            problems.append(Problem(None, "nodes", "the graph has no source"))
        self._check_fused_placement(problems)
        if not problems:
            self._built = True

    def _check_fused_placement(self, problems: list[Problem]) -> None:
        """Nodes fused into one actor run in one place: their `place:` keys must agree."""
        groups: dict[str, list[Node]] = {}
        for node in self.nodes.values():
            if node.fuse is not None:
                groups.setdefault(node.fuse, []).append(node)
        for key, members in groups.items():
            places = {m.place for m in members}
            if len(places) > 1:
                where = "; ".join(f"'{m.id}' ({m.place.describe() if m.place else 'no place'})" for m in members)
                problems.append(Problem(members[0].id, "fuse", f"fuse group '{key}' joins nodes placed differently: {where}; "
                                        "give them the same 'place:' or fuse them apart"))

    def _topological(self, problems: list[Problem]) -> list[str]:
        indeg = {n: 0 for n in self.nodes}
        for node in self.nodes.values():
            indeg[node.id] = len({e.src for e in node.inputs.values()})
        ready = [n for n in self.nodes if indeg[n] == 0]
        order: list[str] = []
        consumers = self.consumers_of_nodes()
        while ready:
            n = ready.pop(0)
            order.append(n)
            for c in consumers[n]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    ready.append(c)
        if len(order) != len(self.nodes):
            placed = set(order)
            stuck = [n for n in self.nodes if n not in placed]
            on_cycle = [n for n in stuck if n in _reachable(consumers, n)]  # not what merely hangs below one
            problems.append(Problem(None, "nodes", f"the graph has a cycle through {', '.join(on_cycle)}"))
        return order

    def consumers_of_nodes(self) -> dict[str, list[str]]:
        """node -> downstream node ids, in declaration order, each once."""
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for edge in node.inputs.values():
                if edge.src in out and node.id not in out[edge.src]:
                    out[edge.src].append(node.id)
        return out

    def validate(self) -> list[Problem]:
        """Every problem with the graph as it stands (empty when it is runnable)."""
        problems: list[Problem] = []
        self.schemas.clear()
        self._validate(problems)
        return problems

    def check(self) -> Graph:
        """Raise ConfigError listing every problem; return self when runnable."""
        if not self._built:
            problems = self.validate()
            if problems:
                raise ConfigError(problems, self.source)
        return self

    def fresh(self) -> Graph:
        """A copy with new operator instances, so every run starts from clean state."""
        g = copy.copy(self)
        g.nodes = {}
        for n, node in self.nodes.items():
            op = type(node.op)(node.op.params, node=n)
            g.nodes[n] = Node(n, op, dict(node.inputs), node.latency_budget_ms, node.on_budget_miss, node.fuse, node.place)
        return g

    # -- queries -------------------------------------------------------------------
    @property
    def sources(self) -> list[Node]:
        return [self.nodes[n] for n in self.order if self.nodes[n].is_source]

    @property
    def sinks(self) -> list[Node]:
        return [self.nodes[n] for n in self.order if self.nodes[n].is_sink]

    def edges(self) -> list[Edge]:
        return [e for n in self.order for e in self.nodes[n].inputs.values()]

    def downstream(self, node_ids: list[str]) -> list[str]:
        """Nodes reachable from `node_ids` (themselves included), in topological order."""
        consumers = self.consumers_of_nodes()
        seen = set(node_ids)
        stack = list(node_ids)
        while stack:
            for c in consumers[stack.pop()]:
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return [n for n in self.order if n in seen]


def _reachable(consumers: dict[str, list[str]], start: str) -> set[str]:
    """Nodes reachable from `start` by one or more edges (`start` itself only through a cycle)."""
    seen: set[str] = set()
    stack = list(consumers[start])
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(consumers[n])
    return seen


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML's safe loader, except that a key given twice in one mapping is an error.

    PyYAML keeps the last of two equal keys without a word, so a second `params:` under a
    node would silently replace the first.
    """


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            line = first.setdefault(key, key_node.start_mark.line)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if line != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first given at line {line + 1})", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _check_ray_key(spec: Any, problems: list[Problem]) -> None:
    """The top-level `ray:` key: `{address: HOST:PORT|auto, placement_timeout_s: 60}`."""
    if spec is None:
        return
    if not isinstance(spec, dict):
        problems.append(Problem(None, "ray", f"must be a mapping like {{address: 'HOST:PORT'}}, got {spec!r}"))
        return
    for key, value in spec.items():
        if key not in RAY_KEYS:
            problems.append(Problem(None, f"ray.{key}", f"unknown key (expected {', '.join(sorted(RAY_KEYS))})"))
        elif key == "address" and (not isinstance(value, str) or not value):
            problems.append(Problem(None, "ray.address", f"must be 'HOST:PORT', 'auto' or 'ray://HOST:PORT', got {value!r}"))
        elif key == "placement_timeout_s" and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            problems.append(Problem(None, "ray.placement_timeout_s", f"must be a positive number of seconds, got {value!r}"))


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; ConfigError names the file, and the line and column when malformed
    or when a mapping repeats a key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", str(path)) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"malformed YAML{where}: {reason}", str(path)) from None


def apply_overrides(data: dict, overrides, problems: list[Problem]) -> None:
    """Apply `node.param=value` (or `node.key=value`) overrides; values are YAML scalars."""
    nodes = data["nodes"]
    for item in overrides or ():
        path, sep, raw = str(item).partition("=")
        if not sep:
            problems.append(Problem(None, "--set", f"'{item}' is not of the form node.param=value"))
            continue
        parts = path.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if parts[0] in TOP_KEYS - {"nodes"} and parts[0] not in nodes:
            target = data
            for p in parts[:-1]:
                target = target.setdefault(p, {})
                if not isinstance(target, dict):
                    problems.append(Problem(None, "--set", f"'{path}' does not name a mapping"))
                    break
            else:
                target[parts[-1]] = value
            continue
        if len(parts) < 2 or parts[0] not in nodes:
            known = ", ".join(nodes)
            problems.append(Problem(None, "--set", f"'{path}' names no node (nodes: {known})"))
            continue
        spec = nodes[parts[0]]
        if parts[1] in NODE_KEYS - {"params"} and len(parts) == 2:
            spec[parts[1]] = value
            continue
        keys = parts[2:] if parts[1] == "params" else parts[1:]
        if not keys:
            problems.append(Problem(parts[0], "--set", f"'{path}' names no parameter"))
            continue
        op_name = spec.get("op")
        try:
            fields = lookup(str(op_name)).Params.model_fields
        except ConfigError:
            fields = None
        if fields is not None and keys[0] not in fields:
            problems.append(Problem(None, f"--set {path}", f"'{keys[0]}' is not a parameter of '{op_name}' (parameters: {', '.join(fields) or 'none'})"))
            continue
        target = spec.setdefault("params", {}) or {}
        spec["params"] = target
        for k in keys[:-1]:
            target = target.setdefault(k, {})
        target[keys[-1]] = value
