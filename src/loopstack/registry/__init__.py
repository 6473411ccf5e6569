"""Box 5: model registry (versions, aliases, lineage, rollout states) and validation gates."""
