"""An immutable set of resources for one proxy group, packed and encoded once.

Each type's `version_info` is a hash of its content, so the same policy yields the same
versions in any control-plane process: a restarted control plane re-sends nothing unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from functools import cached_property

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse, Resource
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message
from prometheus_client import Counter

from controlplane.cache.references import clusters_used
from controlplane.resources import CLUSTER, ENDPOINT, SHORT

# Registered by XdsMetrics with the control plane's other xDS metrics. It grows with policy
# changes, not with the number of proxies: every proxy in a group shares the same bytes.
ENCODES = Counter("sluice_xds_encodes", "xDS response bodies and delta resources encoded", ["type"], registry=None)


# Whole responses kept per type and snapshot: proxies in one group ask for the same few, while
# proxies reconnecting with stale versions could each need another (built, not kept).
VARIANTS = 16
_NONCES = itertools.count(1)


@dataclass(frozen=True)
class Encoded:
    """A response as it goes on the wire, and the nonce inside it."""

    nonce: str
    data: bytes


@dataclass(frozen=True)
class Step:
    """What changed from the type's previous version: the diff every stream that was up to
    date with it needs, made once per change rather than once per stream."""

    since: str  # the previous version
    changed: tuple[str, ...]  # added or changed, sorted
    removed: tuple[str, ...]  # sorted


@dataclass
class TypeSnapshot:
    type_url: str
    version: str  # of the whole type (state of the world)
    resources: dict[str, Any]
    versions: dict[str, str]  # per resource (delta xDS)
    uses: dict[str, frozenset[str]]  # clusters each listener or route configuration routes to
    step: Step | None = None  # from the version the cache held before (SnapshotCache.set)
    # The messages `resources` were packed from: the next build reuses the packing of any it
    # is given again (the translator hands out unchanged services' route configurations again).
    sources: dict[str, Message] = field(default_factory=dict, repr=False)
    _bodies: dict[frozenset[str] | None, bytes] = field(default_factory=dict, repr=False)
    _delta: dict[str, bytes] = field(default_factory=dict, repr=False)
    _with: dict[frozenset[tuple[str, str]], TypeSnapshot] = field(default_factory=dict, repr=False)
    _used: dict[frozenset[str] | None, frozenset[str]] = field(default_factory=dict, repr=False)
    _sotw: dict[frozenset[str] | None, Encoded] = field(default_factory=dict, repr=False)
    _deltas: dict[tuple[tuple[str, ...], tuple[str, ...]], Encoded] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, type_url: str, messages: dict[str, Message], previous: TypeSnapshot | None = None) -> TypeSnapshot:
        """`previous`: the type's last build, whose packing of the same message objects is reused."""
        packed: dict[str, Any] = {}
        versions: dict[str, str] = {}
        uses: dict[str, frozenset[str]] = {}
        before = {} if previous is None else previous.sources
        for name, message in messages.items():
            if before.get(name) is message:
                assert previous is not None
                packed[name], versions[name] = previous.resources[name], previous.versions[name]
                if name in previous.uses:
                    uses[name] = previous.uses[name]
                continue
            value = message.SerializeToString(deterministic=True)
            packed[name] = Any(type_url=type_url, value=value)
            versions[name] = hashlib.sha256(value).hexdigest()[:16]
            if used := clusters_used(message):
                uses[name] = used
        made = cls.of(type_url, packed, versions, uses)
        made.sources = dict(messages)
        return made

    @classmethod
    def of(cls, type_url: str, packed: dict[str, Any], versions: dict[str, str],
           uses: dict[str, frozenset[str]]) -> TypeSnapshot:
        digest = hashlib.sha256()
        for name in sorted(versions):
            digest.update(name.encode())
            digest.update(b"\0")
            digest.update(versions[name].encode())
        return cls(type_url, digest.hexdigest()[:16], dict(sorted(packed.items())), versions, uses)

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(self.resources)

    def shared(self, names: frozenset[str]) -> frozenset[str]:
        """`names`, or this type's own equal set: a thousand streams asking for every resource
        then hold one set of names between them, not one each."""
        return self.names if names == self.names else names

    def held(self, known: dict[str, str]) -> dict[str, str]:
        """`known` (a stream's name -> version), or this type's own equal mapping, shared likewise.
        Streams never change a mapping in place: they replace it."""
        return self.versions if known == self.versions else known

    def held_names(self, known: dict[str, str]) -> frozenset[str]:
        """The names of `known`: this type's own set when `known` is its own mapping."""
        return self.names if known is self.versions else frozenset(known)

    def follow(self, previous: TypeSnapshot) -> None:
        """Record the step from `previous`, the version this one replaces."""
        if previous is not self and previous.version != self.version:
            self.step = Step(previous.version,
                             tuple(sorted(n for n, v in self.versions.items() if previous.versions.get(n) != v)),
                             tuple(sorted(previous.versions.keys() - self.versions.keys())))

    def used(self, names: frozenset[str] | None) -> frozenset[str]:
        """Clusters the named resources (None: all) route to; asked on every ACK, so kept."""
        cached = self._used.get(names)
        if cached is None:
            chosen = self.uses.values() if names is None else (self.uses[n] for n in names if n in self.uses)
            cached = self._used[names] = frozenset().union(*chosen)
        return cached

    def with_resources(self, other: TypeSnapshot, names: frozenset[str]) -> TypeSnapshot:
        """This type plus `names` as `other` has them. Built once per set, so every proxy that
        keeps the same resources shares one encoding."""
        key = frozenset((n, other.versions[n]) for n in names)
        cached = self._with.get(key)
        if cached is None:
            cached = self.of(
                self.type_url,
                {**self.resources, **{n: other.resources[n] for n in names}},
                {**self.versions, **{n: other.versions[n] for n in names}},
                {**self.uses, **{n: other.uses[n] for n in names if n in other.uses}},
            )
            self._with[key] = cached
        return cached

    def sotw(self, names: frozenset[str] | None) -> Encoded:
        """The whole DiscoveryResponse for these names, nonce included: one object for every
        stream it goes to. A nonce only tells a stream's consecutive responses apart, and no
        stream is sent the same response twice in a row."""
        cached = self._sotw.get(names)
        if cached is None:
            nonce = str(next(_NONCES))
            cached = Encoded(nonce, with_nonce(self.body(names), nonce))
            if len(self._sotw) < VARIANTS:
                self._sotw[names] = cached
        return cached

    def delta(self, changed: tuple[str, ...], removed: tuple[str, ...]) -> Encoded:
        """A DeltaDiscoveryResponse with these resources and removals, shared like `sotw`."""
        cached = self._deltas.get((changed, removed))
        if cached is None:
            nonce = str(next(_NONCES))
            head = DeltaDiscoveryResponse(system_version_info=self.version, type_url=self.type_url,
                                          removed_resources=removed, nonce=nonce).SerializeToString()
            cached = Encoded(nonce, head + b"".join(self.delta_resource(n) for n in changed))
            if len(self._deltas) < VARIANTS:
                self._deltas[(changed, removed)] = cached
        return cached

    def delta_resource(self, name: str) -> bytes:
        """One resource as an encoded DeltaDiscoveryResponse fragment; fragments concatenate."""
        cached = self._delta.get(name)
        if cached is None:
            cached = DeltaDiscoveryResponse(resources=[
                Resource(name=name, version=self.versions[name], resource=self.resources[name])
            ]).SerializeToString()
            self._delta[name] = cached
            ENCODES.labels(SHORT[self.type_url]).inc()
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
            ENCODES.labels(SHORT[self.type_url]).inc()
        return cached


@dataclass(frozen=True)
class Snapshot:
    revision: int
    types: dict[str, TypeSnapshot]

    @classmethod
    def build(cls, revision: int, resources: dict[str, dict[str, Message]], previous: Snapshot | None = None) -> Snapshot:
        """`previous`: the group's last snapshot, whose packing of the same message objects is reused."""
        return cls(revision, {t: TypeSnapshot.build(t, msgs, None if previous is None else previous.types.get(t))
                              for t, msgs in resources.items()})

    def version(self, type_url: str) -> str:
        return self.types[type_url].version

    def keeping(self, clusters: frozenset[str], old: Snapshot) -> Snapshot:
        """This snapshot plus `clusters` (and their endpoints) as `old` has them: clusters a
        proxy's routes still use although the policy removed them (make-before-break)."""
        types = dict(self.types)
        for type_url in (CLUSTER, ENDPOINT):
            if type_url in types and type_url in old.types:
                names = clusters & (old.types[type_url].resources.keys() - types[type_url].resources.keys())
                if names:
                    types[type_url] = types[type_url].with_resources(old.types[type_url], frozenset(names))
        return Snapshot(self.revision, types)


def with_nonce(body: bytes, nonce: str) -> bytes:
    nonce_field: bytes = DiscoveryResponse(nonce=nonce).SerializeToString()
    return body + nonce_field
