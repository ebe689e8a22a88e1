"""An immutable set of resources for one proxy group, packed and encoded once.

Each type's `version_info` is a hash of its content, so the same policy yields the same
versions in any control-plane process: a restarted control plane re-sends nothing unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse, Resource
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message


@dataclass
class TypeSnapshot:
    type_url: str
    version: str  # of the whole type (state of the world)
    resources: dict[str, Any]
    versions: dict[str, str]  # per resource (delta xDS)
    _bodies: dict[frozenset[str] | None, bytes] = field(default_factory=dict, repr=False)
    _delta: dict[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, type_url: str, messages: dict[str, Message]) -> TypeSnapshot:
        digest = hashlib.sha256()
        packed: dict[str, Any] = {}
        versions: dict[str, str] = {}
        for name in sorted(messages):
            value = messages[name].SerializeToString(deterministic=True)
            packed[name] = Any(type_url=type_url, value=value)
            versions[name] = hashlib.sha256(value).hexdigest()[:16]
            digest.update(name.encode())
            digest.update(b"\0")
            digest.update(versions[name].encode())
        return cls(type_url, digest.hexdigest()[:16], packed, versions)

    def delta_resource(self, name: str) -> bytes:
        """One resource as an encoded DeltaDiscoveryResponse fragment; fragments concatenate."""
        cached = self._delta.get(name)
        if cached is None:
            cached = DeltaDiscoveryResponse(resources=[
                Resource(name=name, version=self.versions[name], resource=self.resources[name])
            ]).SerializeToString()
            self._delta[name] = cached
        return cached

    def body(self, names: frozenset[str] | None) -> bytes:
        """The DiscoveryResponse without its nonce, encoded once per name set.

        A protobuf message's encoding concatenated with another's is their merge, so a stream
        appends only its own nonce field to these bytes.
        """
        cached = self._bodies.get(names)
        if cached is None:
            chosen = self.resources.values() if names is None else [
                self.resources[n] for n in sorted(names) if n in self.resources
            ]
            cached = DiscoveryResponse(
                version_info=self.version, type_url=self.type_url, resources=chosen
            ).SerializeToString()
            self._bodies[names] = cached
        return cached


@dataclass(frozen=True)
class Snapshot:
    revision: int
    types: dict[str, TypeSnapshot]

    @classmethod
    def build(cls, revision: int, resources: dict[str, dict[str, Message]]) -> Snapshot:
        return cls(revision, {t: TypeSnapshot.build(t, msgs) for t, msgs in resources.items()})

    def version(self, type_url: str) -> str:
        return self.types[type_url].version


def with_nonce(body: bytes, nonce: str) -> bytes:
    return body + DiscoveryResponse(nonce=nonce).SerializeToString()
