"""SONATA networks of point neurons read into a `NetworkSpec` (Dai et al. 2020, PLOS Comput.
Biol. 16:e1007696; the format of the Allen Institute and the Blue Brain Project).

A SONATA circuit is a JSON config naming node files (HDF5: `nodes/<population>/node_type_id`)
with their node types (a space-separated CSV: `model_type`, `model_template`,
`dynamics_params`), and edge files (HDF5: `edges/<population>/source_node_id`,
`target_node_id`, `edge_type_id`, per-edge attributes in group `0`) with their edge types.
A simulation config adds `run` (`dt`, `tstop`), the spike inputs of virtual nodes and an
optional `node_sets_file` (missing: a node set names a population, else all nodes).

Mapping: each (node population, node type) becomes one population of ours, named
`<population>-<model_name or node_type_id>`; `nest:iaf_psc_alpha` point neurons become
`lif_alpha` with NEST's defaults for what `dynamics_params` leaves out; `virtual` nodes
become spike sources fed by the input file. The edges of each (source group, target group,
sign of the weight) become one explicit projection (a negative weight is inhibitory, as in
NEST), with `syn_weight` and `delay` per edge from group `0`, else from the edge type, else
NEST's default delay of 1 ms. Anything else is an error naming the file and the field.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cluster.brainsim.spec import NetworkSpec, Population, Projection
from pipeline.errors import ConfigError

# NEST 3.10's iaf_psc_alpha defaults, for what a dynamics_params file leaves out
IAF_PSC_ALPHA = {"C_m": 250.0, "tau_m": 10.0, "t_ref": 2.0, "E_L": -70.0, "V_th": -55.0, "V_reset": -70.0,
                 "I_e": 0.0, "tau_syn_ex": 2.0, "tau_syn_in": 2.0, "V_m": -70.0}
NEST_DEFAULT_DELAY_MS = 1.0


class SonataError(ConfigError):
    """A SONATA file is missing, malformed or uses something we do not simulate."""

    def __init__(self, file, field_name: str, why: str):
        super().__init__(f"{file}: {field_name}: {why}")
        self.file, self.field = str(file), field_name


@dataclass
class Group:
    """One population of ours: the nodes of one node type in one SONATA population."""

    name: str
    sonata_population: str
    node_ids: np.ndarray  # SONATA node ids, in our order
    population: Population
    lo: int = 0


@dataclass
class Circuit:
    """What was read: the network, the run's length, and how our neurons map to SONATA nodes."""

    spec: NetworkSpec
    duration_s: float | None
    groups: list[Group]
    files: dict = field(default_factory=dict)

    def sonata_ids(self, neuron: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Our global neuron indices as (group index, SONATA node id)."""
        los = np.array([g.lo for g in self.groups])
        gi = np.searchsorted(los, neuron, side="right") - 1
        ids = np.empty(len(neuron), np.int64)
        for i, g in enumerate(self.groups):
            sel = gi == i
            ids[sel] = g.node_ids[neuron[sel] - g.lo]
        return gi, ids


def _expand(value, manifest: dict):
    if isinstance(value, str):
        for _ in range(10):
            new = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: manifest.get(m.group(1), m.group(0)), value)
            if new == value:
                break
            value = new
        return value
    if isinstance(value, dict):
        return {k: _expand(v, manifest) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, manifest) for v in value]
    return value


def _config(path: Path) -> dict:
    """A SONATA JSON config with its manifest variables substituted and paths absolute."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise SonataError(path, "file", f"cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SonataError(path, "json", f"malformed at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise SonataError(path, "json", "expected a JSON object")
    base = path.resolve().parent
    manifest = {"configdir": str(base)}
    for key, value in (doc.get("manifest") or {}).items():
        manifest[key.lstrip("$")] = _expand(value, manifest)
    doc = _expand({k: v for k, v in doc.items() if k != "manifest"}, manifest)

    def absolute(value):
        if isinstance(value, dict):
            return {k: absolute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if isinstance(value, str) and (value.startswith(("./", "../")) or value.endswith((".h5", ".csv", ".json"))):
            p = Path(value)
            return str(p if p.is_absolute() else (base / p).resolve())
        return value

    return absolute(doc)


def _types(csv_path: str, key: str, where: str) -> dict[int, dict]:
    """A SONATA types CSV (whitespace-separated, one row per type) by its id column."""
    p = Path(csv_path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SonataError(p, where, f"cannot read: {exc.strerror}") from None
    rows = list(csv.reader([line for line in text.splitlines() if line.strip()], delimiter=" ",
                           skipinitialspace=True))
    if not rows or key not in rows[0]:
        raise SonataError(p, key, "missing column")
    head = rows[0]
    out = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(head):
            raise SonataError(p, f"line {n}", f"{len(row)} values for {len(head)} columns")
        rec = dict(zip(head, row, strict=True))
        out[int(rec[key])] = rec
    return out


def _dataset(h5, file, name: str) -> np.ndarray:
    if name not in h5:
        raise SonataError(file, name, "missing dataset")
    return h5[name][()]


def _h5(path: str, where: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SonataError(path, where, f"cannot open as HDF5: {exc}") from None


def _neuron(rec: dict, models_dir: str | None, csv_path: str) -> dict:
    """A point neuron's params from its node type's model_template and dynamics_params."""
    template = rec.get("model_template", "")
    if template not in ("nest:iaf_psc_alpha", "iaf_psc_alpha"):
        raise SonataError(csv_path, "model_template",
                          f"'{template}' (node type {rec.get('node_type_id')}) is not supported; point neurons "
                          f"must be nest:iaf_psc_alpha")
    params = dict(IAF_PSC_ALPHA)
    dyn = rec.get("dynamics_params")
    if dyn and dyn != "NULL":
        p = Path(dyn) if Path(dyn).is_absolute() else Path(models_dir or ".") / dyn
        try:
            extra = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SonataError(csv_path, "dynamics_params", f"'{p}' cannot be read as JSON: {exc}") from None
        unknown = set(extra) - set(IAF_PSC_ALPHA)
        if unknown:
            raise SonataError(p, ", ".join(sorted(unknown)), "not parameters of iaf_psc_alpha that we simulate")
        params.update(extra)
    return dict(model="lif_alpha", c_m_pf=params["C_m"], tau_m_ms=params["tau_m"], t_ref_ms=params["t_ref"],
                v_rest_mv=params["E_L"], v_thresh_mv=params["V_th"], v_reset_mv=params["V_reset"],
                i_e_pa=params["I_e"], tau_syn_e_ms=params["tau_syn_ex"], tau_syn_i_ms=params["tau_syn_in"],
                v_init_mv=(params["V_m"], params["V_m"]))


def read(path: str | Path, dt_ms: float | None = None, seed: int = 1) -> Circuit:
    """Read a SONATA simulation or circuit config (JSON) into a network of ours."""
    path = Path(path)
    conf = _config(path)
    sim_conf, circuit_path = None, path
    if "networks" not in conf:
        if "network" not in conf:
            raise SonataError(path, "networks", "neither a circuit config (networks) nor a simulation config "
                                                "(network)")
        sim_conf, circuit_path = conf, Path(conf["network"])
        conf = _config(circuit_path)
        if "networks" not in conf:
            raise SonataError(circuit_path, "networks", "missing")
    run = (sim_conf or conf).get("run") or {}
    dt = dt_ms if dt_ms is not None else float(run.get("dt", 0.1))
    duration_s = float(run["tstop"]) / 1e3 if "tstop" in run else None
    comps = conf.get("components") or {}
    models_dir = comps.get("point_neuron_models_dir")
    nets = conf["networks"]

    groups: list[Group] = []
    pop_groups: dict[str, list[Group]] = {}  # SONATA population -> its groups
    node_index: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # population -> (node ids sorted, our global)
    virtual: dict[str, Group] = {}
    for i, entry in enumerate(nets.get("nodes") or []):
        for key in ("nodes_file", "node_types_file"):
            if key not in entry:
                raise SonataError(circuit_path, f"networks.nodes[{i}].{key}", "missing")
        types = _types(entry["node_types_file"], "node_type_id", "node_types_file")
        with _h5(entry["nodes_file"], "nodes_file") as h5:
            if "nodes" not in h5:
                raise SonataError(entry["nodes_file"], "nodes", "missing group")
            for pop in h5["nodes"]:
                base = f"nodes/{pop}"
                type_ids = _dataset(h5, entry["nodes_file"], f"{base}/node_type_id").astype(np.int64)
                ids = (_dataset(h5, entry["nodes_file"], f"{base}/node_id").astype(np.int64)
                       if f"{base}/node_id" in h5 else np.arange(len(type_ids)))
                for t in np.unique(type_ids):
                    if int(t) not in types:
                        raise SonataError(entry["nodes_file"], f"{base}/node_type_id",
                                          f"type {int(t)} is not in {entry['node_types_file']}")
                order = np.argsort(type_ids, kind="stable")
                for t in np.unique(type_ids):
                    rec = types[int(t)]
                    sel = order[type_ids[order] == t]
                    label = rec.get("model_name") or str(int(t))
                    kind = rec.get("model_type", "")
                    if kind == "virtual":
                        spec = dict(model="spike_source")
                    elif kind in ("point_process", "point_neuron"):
                        spec = _neuron(rec, models_dir, entry["node_types_file"])
                    else:
                        raise SonataError(entry["node_types_file"], "model_type",
                                          f"'{kind}' (node type {int(t)}) is not supported (point_process, "
                                          f"point_neuron or virtual)")
                    g = Group(f"{pop}-{label}", pop, ids[sel], Population(name=f"{pop}-{label}", size=len(sel),
                                                                         **spec))
                    groups.append(g)
                    pop_groups.setdefault(pop, []).append(g)
                    if kind == "virtual":
                        virtual[pop] = g  # one virtual type per population is what we feed inputs to
    if not groups:
        raise SonataError(circuit_path, "networks.nodes", "no nodes")
    lo = 0
    for g in groups:
        g.lo = lo
        lo += len(g.node_ids)
    for pop, gs in pop_groups.items():
        ids = np.concatenate([g.node_ids for g in gs])
        glob = np.concatenate([g.lo + np.arange(len(g.node_ids)) for g in gs])
        order = np.argsort(ids)
        node_index[pop] = (ids[order], glob[order])

    def to_global(pop: str, ids: np.ndarray, file, name: str) -> np.ndarray:
        if pop not in node_index:
            raise SonataError(file, name, f"node population '{pop}' is not among the nodes "
                                          f"({', '.join(node_index)})")
        sorted_ids, glob = node_index[pop]
        pos = np.searchsorted(sorted_ids, ids)
        bad = (pos >= len(sorted_ids)) | (sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] != ids)
        if bad.any():
            i = int(np.argmax(bad))
            raise SonataError(file, name, f"node id {int(ids[i])} (edge {i}) is not in population '{pop}' "
                                          f"({len(sorted_ids)} nodes)")
        return glob[pos]

    group_of = np.empty(lo, np.int64)
    for gi, g in enumerate(groups):
        group_of[g.lo:g.lo + len(g.node_ids)] = gi
    projections = []
    for i, entry in enumerate(nets.get("edges") or []):
        if entry.get("enabled", True) is False:
            continue
        for key in ("edges_file", "edge_types_file"):
            if key not in entry:
                raise SonataError(circuit_path, f"networks.edges[{i}].{key}", "missing")
        etypes = _types(entry["edge_types_file"], "edge_type_id", "edge_types_file")
        f = entry["edges_file"]
        with _h5(f, "edges_file") as h5:
            if "edges" not in h5:
                raise SonataError(f, "edges", "missing group")
            for epop in h5["edges"]:
                base = f"edges/{epop}"
                src_ds, tgt_ds = f"{base}/source_node_id", f"{base}/target_node_id"
                src = _dataset(h5, f, src_ds).astype(np.int64)
                tgt = _dataset(h5, f, tgt_ds).astype(np.int64)
                if len(src) != len(tgt):
                    raise SonataError(f, tgt_ds, f"{len(tgt)} targets for {len(src)} sources")
                src_pop = h5[src_ds].attrs.get("node_population")
                tgt_pop = h5[tgt_ds].attrs.get("node_population")
                for name, v in ((src_ds, src_pop), (tgt_ds, tgt_pop)):
                    if v is None:
                        raise SonataError(f, f"{name}@node_population", "missing attribute")
                src_pop = src_pop.decode() if isinstance(src_pop, bytes) else str(src_pop)
                tgt_pop = tgt_pop.decode() if isinstance(tgt_pop, bytes) else str(tgt_pop)
                type_ids = _dataset(h5, f, f"{base}/edge_type_id").astype(np.int64)
                for t in np.unique(type_ids):
                    if int(t) not in etypes:
                        raise SonataError(f, f"{base}/edge_type_id", f"type {int(t)} is not in "
                                                                     f"{entry['edge_types_file']}")
                weight = _edge_attribute(h5, f, base, "syn_weight", type_ids, etypes, None)
                delay = _edge_attribute(h5, f, base, "delay", type_ids, etypes, NEST_DEFAULT_DELAY_MS)
                gsrc = to_global(src_pop, src, f, src_ds)
                gtgt = to_global(tgt_pop, tgt, f, tgt_ds)
                if any(groups[j].population.model == "spike_source" for j in np.unique(group_of[gtgt])):
                    raise SonataError(f, tgt_ds, "edges into virtual nodes (they only emit spikes)")
                key = group_of[gsrc] * (2 * len(groups)) + group_of[gtgt] * 2 + (weight < 0)
                for kv in np.unique(key):
                    sel = key == kv
                    a, b = groups[group_of[gsrc[sel][0]]], groups[group_of[gtgt[sel][0]]]
                    projections.append(Projection(
                        pre=a.name, post=b.name, rule="explicit", receptor="inh" if kv % 2 else "exc",
                        sources=(gsrc[sel] - a.lo).tolist(), targets=(gtgt[sel] - b.lo).tolist(),
                        weights=weight[sel].tolist(), delays_ms=delay[sel].tolist(), weight=0.0, delay_ms=1.0))
    if sim_conf is not None:
        _inputs(sim_conf, path, virtual, pop_groups)
    spec = NetworkSpec(dt_ms=dt, seed=seed, populations=[g.population for g in groups], projections=projections)
    return Circuit(spec, duration_s, groups, {"config": str(path), "circuit": str(circuit_path)})


def _edge_attribute(h5, file, base: str, name: str, type_ids, etypes: dict, default) -> np.ndarray:
    """An edge attribute per edge: group 0's dataset, else the edge type's column, else `default`."""
    if f"{base}/0/{name}" in h5:
        return h5[f"{base}/0/{name}"][()].astype(np.float64)
    out = np.empty(len(type_ids))
    for t in np.unique(type_ids):
        raw = etypes[int(t)].get(name)
        if raw in (None, "", "NULL"):
            if default is None:
                raise SonataError(file, f"{base}/0/{name}", f"missing, and edge type {int(t)} gives no {name}")
            out[type_ids == t] = default
        else:
            try:
                out[type_ids == t] = float(raw)
            except ValueError:
                raise SonataError(file, name, f"edge type {int(t)}: '{raw}' is not a number") from None
    return out


def _inputs(sim_conf: dict, path: Path, virtual: dict[str, Group], pop_groups: dict) -> None:
    """Spike trains of the simulation config's `spikes` inputs into the virtual nodes' sources."""
    node_sets = {}
    ns_file = sim_conf.get("node_sets_file")
    if ns_file and Path(ns_file).exists():
        try:
            node_sets = json.loads(Path(ns_file).read_text())
        except json.JSONDecodeError as exc:
            raise SonataError(ns_file, "json", f"malformed: {exc.msg}") from None
    for name, inp in (sim_conf.get("inputs") or {}).items():
        if inp.get("input_type") != "spikes":
            raise SonataError(path, f"inputs.{name}.input_type", f"'{inp.get('input_type')}' is not supported "
                                                                 f"(spikes)")
        node_set = inp.get("node_set")
        target = node_sets.get(node_set, {}).get("population") if node_set in node_sets else node_set
        if target not in virtual:  # a missing node_sets.json means "all nodes": every virtual population
            targets = list(virtual)
        else:
            targets = [target]
        f = inp.get("input_file")
        if not f:
            raise SonataError(path, f"inputs.{name}.input_file", "missing")
        with _h5(f, f"inputs.{name}.input_file") as h5:
            for pop in targets:
                if f"spikes/{pop}/node_ids" in h5:  # SONATA 0.1 spike file: one group per population
                    ids = h5[f"spikes/{pop}/node_ids"][()].astype(np.int64)
                    times = h5[f"spikes/{pop}/timestamps"][()].astype(np.float64)
                elif "spikes/gids" in h5:  # the older layout (bmtk): gids and timestamps
                    ids = h5["spikes/gids"][()].astype(np.int64)
                    times = h5["spikes/timestamps"][()].astype(np.float64)
                else:
                    raise SonataError(f, f"spikes/{pop}/node_ids", "missing (nor spikes/gids)")
                g = virtual[pop]
                pos = np.searchsorted(np.sort(g.node_ids), ids)
                order = np.argsort(g.node_ids)
                if len(ids) and ((pos >= len(g.node_ids)) | (np.sort(g.node_ids)[np.minimum(pos, len(g.node_ids) - 1)]
                                                            != ids)).any():
                    raise SonataError(f, "spikes/gids", f"a node id is not in population '{pop}'")
                local = order[pos]
                keep = times > 0
                t_ms = list(g.population.spike_times_ms) + times[keep].tolist()
                n = list(g.population.spike_neurons) + local[keep].tolist()
                g.population = g.population.model_copy(update={"spike_times_ms": t_ms, "spike_neurons": n})
