"""Experiments: deterministic, sticky assignment of users to buckets and weighted variants."""
from loopstack.experiments.assignment import AssignmentError, assign, bucket

__all__ = ["AssignmentError", "assign", "bucket"]
