"""Network descriptions: populations and projections as validated data, plus built-in models.

A network is either written out (`populations`, `projections`) or named (`model:`) with a
few options; built-in models expand to the same populations and projections. Units are in
the field names: `_ms`, `_mv`, `_hz`, `_pf`, `_pa`. Weights are in mV for `lif_cuba` (a
current jump in units of the leak resistance) and `lif_delta` (a membrane-potential jump),
in units of the leak conductance for `lif_coba`, and in pA for `lif_alpha` (NEST's
iaf_psc_alpha: the peak of the alpha-shaped current, with capacitance `c_m_pf`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dist(_Spec):
    """A distributed weight or delay: `normal` (mean, std) or `uniform` (low, high)."""

    dist: Literal["normal", "uniform"]
    mean: float = 0.0
    std: float = 0.0
    low: float = 0.0
    high: float = 0.0


class External(_Spec):
    """Independent Poisson input to every neuron of a population (Brian's PoissonInput)."""

    rate_hz: float = Field(..., ge=0, description="total rate of all external inputs to one neuron")
    weight: float = Field(..., description="jump per external spike (same units as projections)")
    receptor: Literal["exc", "inh"] = "exc"


class Population(_Spec):
    """A group of identical neurons or spike generators."""

    name: str
    size: int = Field(..., ge=1)
    model: Literal["lif_cuba", "lif_coba", "lif_delta", "lif_alpha", "poisson", "spike_source"] = "lif_cuba"
    tau_m_ms: float = Field(20.0, gt=0)
    v_rest_mv: float = -60.0
    v_thresh_mv: float = -50.0
    v_reset_mv: float = -60.0
    t_ref_ms: float = Field(5.0, ge=0)
    tau_syn_e_ms: float = Field(5.0, gt=0)
    tau_syn_i_ms: float = Field(10.0, gt=0)
    c_m_pf: float = Field(250.0, gt=0, description="membrane capacitance (lif_alpha)")
    i_e_pa: float = Field(0.0, description="constant input current (lif_alpha)")
    e_rev_e_mv: float = 0.0
    e_rev_i_mv: float = -80.0
    v_init_mv: tuple[float, float] | Dist | None = Field(
        None, description="initial v: a uniform (low, high) range or a distribution (default v_rest)")
    g_e_init: tuple[float, float] | Dist | None = Field(
        None, description="initial excitatory input: a uniform (low, high) range or a distribution (default 0)")
    g_i_init: tuple[float, float] | Dist | None = Field(
        None, description="initial inhibitory input: a uniform (low, high) range or a distribution (default 0)")
    external: External | None = None
    rate_hz: float = Field(0.0, ge=0, description="for `poisson` populations")
    spike_times_ms: list[float] = Field(default_factory=list, description="for `spike_source`")
    spike_neurons: list[int] = Field(default_factory=list, description="for `spike_source`")

    @model_validator(mode="after")
    def _sources(self):
        if len(self.spike_times_ms) != len(self.spike_neurons):
            raise ValueError(f"population '{self.name}': spike_times_ms and spike_neurons differ in length")
        if any(n < 0 or n >= self.size for n in self.spike_neurons):
            raise ValueError(f"population '{self.name}': spike_neurons must lie in [0, {self.size})")
        return self


class Projection(_Spec):
    """Synapses from population `pre` to `post` by a connection rule."""

    pre: str
    post: str
    rule: Literal["fixed_probability", "fixed_indegree", "one_to_one", "explicit"] = "fixed_probability"
    p: float = Field(0.1, ge=0, le=1, description="for fixed_probability")
    indegree: int = Field(0, ge=0, description="for fixed_indegree")
    weight: float | Dist = 1.0
    delay_ms: float | Dist = Field(1.5, description="at least one step once rounded; a constant 0 is a zero-delay "
                                                    "synapse (delivered within the step, as Brian's on_pre)")
    receptor: Literal["exc", "inh"] | None = Field(None, description="default: exc if weight >= 0")
    autapses: bool = True
    sources: list[int] = Field(default_factory=list, description="explicit: pre index (within `pre`) per edge")
    targets: list[int] = Field(default_factory=list, description="explicit: post index (within `post`) per edge")
    weights: list[float] | None = Field(None, description="explicit: weight per edge (default `weight`)")
    delays_ms: list[float] | None = Field(None, description="explicit: delay per edge (default `delay_ms`)")

    @model_validator(mode="after")
    def _edges(self):
        n = len(self.sources)
        if len(self.targets) != n:
            raise ValueError(f"projection {self.pre}->{self.post}: sources and targets differ in length")
        for name, vals in (("weights", self.weights), ("delays_ms", self.delays_ms)):
            if vals is not None and len(vals) != n:
                raise ValueError(f"projection {self.pre}->{self.post}: {name} has {len(vals)} values for {n} edges")
        if n and self.rule != "explicit":
            raise ValueError(f"projection {self.pre}->{self.post}: sources/targets need rule: explicit")
        return self


class NetworkSpec(_Spec):
    """The whole network: populations, projections, and how it is simulated."""

    model: Literal["custom", "brunel2000", "vogels_abbott_cuba", "vogels_abbott_coba",
                   "potjans_diesmann_2014"] = "custom"
    sonata: str | None = Field(None, description="a SONATA simulation or circuit config (JSON) to read the "
                                                 "populations and projections from")
    options: dict = Field(default_factory=dict, description="options of a built-in model")
    scale: float = Field(1.0, gt=0, description="multiplies population sizes of built-in models")
    dt_ms: float = Field(0.1, gt=0)
    seed: int = Field(1, ge=0)
    populations: list[Population] = Field(default_factory=list)
    projections: list[Projection] = Field(default_factory=list)

    def expanded(self) -> NetworkSpec:
        """This network with a built-in model turned into populations and projections."""
        if self.sonata is not None:
            from cluster.brainsim import sonata

            dt = self.dt_ms if "dt_ms" in self.model_fields_set else None
            return sonata.read(self.sonata, dt_ms=dt, seed=self.seed).spec
        if self.model == "custom":
            return self
        from cluster.brainsim import models

        pops, projs = models.BUILTINS[self.model](self.scale, **self.options)
        return self.model_copy(update={"model": "custom", "options": {}, "populations": pops,
                                       "projections": projs})
