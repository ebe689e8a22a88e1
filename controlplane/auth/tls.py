"""TLS for the admin API and mutual TLS for xDS, from PEM files named in the settings."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc


def admin_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """HTTPS for the admin API; clients authenticate with bearer tokens, not certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def xds_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS for the ADS server; with `client_ca`, every Envoy must present a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=None if client_ca is None else client_ca.read_bytes(),
        require_client_auth=client_ca is not None,
    )
