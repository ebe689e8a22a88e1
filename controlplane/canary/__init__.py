"""Canary releases: a controller that shifts a route's weight step by step, gated on the
Envoys' own metrics, and rolls back on its own."""

from controlplane.canary.controller import CanaryController

__all__ = ["CanaryController"]
