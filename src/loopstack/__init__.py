"""loopstack: a production ML system in one package.

Public API only; everything else lives in the box packages (log, features, ...).
"""
from loopstack.errors import (ConfigError, DefinitionError, FeatureReferenceError, LogError, LoopstackError,
                              MetadataError, RetrievalError)
from loopstack.features.definitions import (Count, CountDistinct, Entity, EventSource, FeatureView, Field, Last,
                                            Max, Mean, Min, OnDemandFeature, Sum)
from loopstack.project import Project

__version__ = "0.1.0"

__all__ = [
    "Project", "Entity", "EventSource", "FeatureView", "Field", "OnDemandFeature",
    "Count", "Sum", "Mean", "Min", "Max", "Last", "CountDistinct",
    "LoopstackError", "ConfigError", "DefinitionError", "FeatureReferenceError", "LogError", "MetadataError",
    "RetrievalError", "__version__",
]
