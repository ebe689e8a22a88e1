"""Who may use the admin API: bearer tokens with roles, and the TLS settings of both APIs."""

from controlplane.auth.authenticator import Authenticator, AuthMode, Principal, Unauthorized
from controlplane.auth.tokens import ROLES, issue, role_allows

__all__ = ["ROLES", "AuthMode", "Authenticator", "Principal", "Unauthorized", "issue", "role_allows"]
