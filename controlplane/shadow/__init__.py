"""The shadow comparator: sends a mirrored request to the stable and the candidate backends,
compares their answers, and tallies agreement for the canary controller."""

from controlplane.shadow.server import Comparator, Target

__all__ = ["Comparator", "Target"]
