"""The operators' admin API."""

from controlplane.admin.api import AdminApi

__all__ = ["AdminApi"]
