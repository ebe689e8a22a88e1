"""The policy model rejects bad input with the path of the field at fault."""

from __future__ import annotations

import copy

import pytest
from policies import demo_policy

from controlplane.policy import InvalidPolicy, Policy, parse_document, with_document


def _problems(raw: object) -> list[tuple[str, str]]:
    with pytest.raises(InvalidPolicy) as caught:
        parse_document(raw)
    return [(p.loc, p.msg) for p in caught.value.problems]


def test_demo_documents_parse() -> None:
    policy = Policy()
    for raw in demo_policy(8001, 8002):
        policy = with_document(policy, parse_document(raw))
    assert policy.problems() == []
    assert policy.services["classifier"].routes[0].split[1].weight == 0


def test_field_errors_name_their_path() -> None:
    service = copy.deepcopy(demo_policy(1, 2)[2])
    service["spec"]["routes"][0]["match"] = {"prefix": "no-slash"}
    assert _problems(service) == [("spec.routes.0.match", "prefix must start with '/'")]

    service["spec"]["routes"][0]["match"] = {"prefix": "/a", "path": "/b"}
    assert _problems(service)[0][0] == "spec.routes.0.match"

    backend = {"kind": "Backend", "name": "b", "spec": {"endpoints": [{"address": "127.0.0.1", "port": 70000}]}}
    assert _problems(backend)[0][0] == "spec.endpoints.0.port"


def test_envelope_errors() -> None:
    assert _problems({"kind": "Servce", "name": "x", "spec": {}})[0][0] == "kind"
    assert _problems({"kind": "Backend", "name": "Not_Valid", "spec": {}})[0][0] == "name"
    assert _problems({"kind": "Backend", "name": "x", "spec": {"endpoints": [], "extra": 1}})[0][0].startswith("spec.")


def test_split_rules() -> None:
    service = copy.deepcopy(demo_policy(1, 2)[2])
    service["spec"]["routes"][0]["split"] = [{"backend": "a", "weight": 0}]
    assert "add up to 0" in _problems(service)[0][1]
    service["spec"]["routes"][0]["split"] = [{"backend": "a", "weight": 1}, {"backend": "a", "weight": 1}]
    assert "more than once" in _problems(service)[0][1]


def test_invalid_regex_is_rejected() -> None:
    service = copy.deepcopy(demo_policy(1, 2)[2])
    service["spec"]["routes"][0]["match"] = {"regex": "/v2/(unclosed"}
    loc, msg = _problems(service)[0]
    assert loc == "spec.routes.0.match" and "invalid regular expression" in msg


def test_cross_object_problems() -> None:
    policy = with_document(Policy(), parse_document(demo_policy(1, 2)[2]))  # routes to backends that do not exist
    locs = [p.loc for p in policy.problems()]
    assert locs == ["services.classifier.routes.0.split.0.backend", "services.classifier.routes.0.split.1.backend"]

    other = {"kind": "Service", "name": "other", "spec": {"hosts": ["*"], "routes": [
        {"name": "r", "match": {"prefix": "/"}, "split": [{"backend": "classifier-v1"}]}]}}
    for raw in [*demo_policy(1, 2), other]:
        policy = with_document(policy, parse_document(raw))
    assert [p.loc for p in policy.problems()] == ["services.other.hosts.0"]


def test_mirror_targets_must_exist_and_stay() -> None:
    policy = Policy()
    for raw in demo_policy(1, 2):
        policy = with_document(policy, parse_document(raw))
    service = copy.deepcopy(demo_policy(1, 2)[2])
    service["spec"]["routes"][0]["split"] = [{"backend": "classifier-v1", "weight": 100}]
    service["spec"]["routes"][0]["mirrors"] = [{"backend": "shadow-model"}]
    mirrored = with_document(policy, parse_document(service))
    assert [p.loc for p in mirrored.problems()] == ["services.classifier.routes.0.mirrors.0.backend"]
    service["spec"]["routes"][0]["mirrors"] = [{"backend": "classifier-v2"}]
    mirrored = with_document(policy, parse_document(service))
    assert mirrored.problems() == []
    assert mirrored.users_of_backend("classifier-v2") == ["services.classifier.routes.infer"]


def test_what_the_data_plane_would_refuse_is_refused_here() -> None:
    """Each passed the model once and was NACKed by Envoy or the ratelimit filter."""
    hostname = {"kind": "Backend", "name": "b", "spec": {"endpoints": [{"address": "backend-v1", "port": 80}]}}
    loc, msg = _problems(hostname)[0]
    assert loc == "spec.endpoints.0.address" and "not an IP address" in msg
    ipv6 = {"kind": "Backend", "name": "b", "spec": {"endpoints": [{"address": "2001:db8::1", "port": 80}]}}
    assert parse_document(ipv6).spec.endpoints[0].address == "2001:db8::1"  # type: ignore[union-attr]

    limit = {"service": "classifier", "rate": 1.0, "burst": 1}
    assert _problems({"kind": "RateLimit", "name": "l", "spec": {**limit, "rate": 1e-7}})[0][0] == "spec.rate"
    for field, value in (("key", [{"type": "header", "name": "x" * 65}]), ("cost_header", "x" * 65)):
        assert _problems({"kind": "RateLimit", "name": "l", "spec": {**limit, field: value}})[0][0].startswith(
            f"spec.{field}")
    parse_document({"kind": "RateLimit", "name": "l", "spec": {**limit, "cost_header": "x" * 64}})

    service = copy.deepcopy(demo_policy(1, 2)[2])
    service["spec"]["routes"][0]["match"]["headers"] = [{"name": "x-a", "prefix": ""}]
    assert _problems(service)[0][0] == "spec.routes.0.match.headers.0.prefix"
