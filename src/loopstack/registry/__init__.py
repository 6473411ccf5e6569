"""Box 5: model registry (versions, aliases, lineage, rollout states) and validation gates."""
from loopstack.registry.entities import FeatureSpec, ModelSignature, ModelVersion
from loopstack.registry.errors import (ArtifactIntegrityError, ConcurrentUpdateError, ModelReferenceError,
                                       RegistryError, TransitionError)
from loopstack.registry.gate import GateDecision, GateReason, ModelValidationGate
from loopstack.registry.profile import bin_counts, build_profile
from loopstack.registry.refs import ModelRef, parse_ref
from loopstack.registry.registry import Registry
from loopstack.registry.stages import STATES

__all__ = ["ArtifactIntegrityError", "ConcurrentUpdateError", "FeatureSpec", "GateDecision", "GateReason",
           "ModelRef", "ModelSignature", "ModelValidationGate", "ModelVersion", "ModelReferenceError", "Registry",
           "RegistryError", "STATES", "TransitionError", "bin_counts", "build_profile", "parse_ref"]
