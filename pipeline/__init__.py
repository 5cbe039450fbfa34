"""reflexarc's core: graphs, schemas, the operator protocol, executors and metrics."""

from pipeline.errors import ConfigError, DataError, LinkError, OperatorError, ReflexarcError, SchemaError
from pipeline.graph import Edge, Graph, Node
from pipeline.operator import Operator, Params, Source, SourceParams, register, registry
from pipeline.run import RunResult, run

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "Edge",
    "Graph",
    "LinkError",
    "Node",
    "Operator",
    "OperatorError",
    "Params",
    "ReflexarcError",
    "RunResult",
    "SchemaError",
    "Source",
    "SourceParams",
    "register",
    "registry",
    "run",
]
