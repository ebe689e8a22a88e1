"""TLS for the admin API and mutual TLS for xDS, from PEM files named in the settings."""

from __future__ import annotations

import ssl
from pathlib import Path


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def admin_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """HTTPS for the admin API; clients authenticate with bearer tokens, not certificates."""
    return _server_context(cert, key)


def xds_ssl_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """TLS for the ADS server; with `client_ca`, every Envoy must present a certificate it signed."""
    context = _server_context(cert, key)
    context.set_alpn_protocols(["h2"])  # gRPC is HTTP/2 only
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context
