"""Model objects: field rules, cross-object rules, and what the translator makes of them (model
routes before the entry route, GET /v1/models from policy, fallback clusters by priority, the
llm filter's configuration)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from policies import field_problems

from controlplane import resources as types
from controlplane.cache.consistency import problems as snapshot_problems
from controlplane.policy import Policy, parse_document, with_document
from controlplane.translate import Allowance, ProxyGroup, translate, translate_shares
from controlplane.translate.filters import LLM
from controlplane.translate.llm import llm_config

GROUP = ProxyGroup("edge", "127.0.0.1", 10000)


def backend(name: str, port: int) -> dict[str, Any]:
    return {"kind": "Backend", "name": name, "spec": {"endpoints": [{"address": "127.0.0.1", "port": port}]}}


def model(name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "Model", "name": name, "spec": {"service": "llm", "routes": ["openai"], **spec}}


BASE = [backend("a", 8001), backend("b", 8002), backend("c", 8003),
        {"kind": "Service", "name": "llm", "spec": {"routes": [
            {"name": "health", "match": {"path": "/health"}, "split": [{"backend": "a"}]},
            {"name": "openai", "match": {"prefix": "/v1/"}, "split": [{"backend": "a"}]}]}}]
CHAT = model("chat", model="gpt-4o", backends=[{"backend": "a", "weight": 90}, {"backend": "b", "weight": 10,
                                                                                "model": "llama-3.1-8b"}],
             fallback=["c"])
EMBED = model("embed", model="text-embedding-3-small", backends=[{"backend": "c"}])


def build(*documents: dict[str, Any]) -> Policy:
    policy = Policy()
    for raw in [*BASE, *documents]:
        policy = with_document(policy, parse_document(raw))
    return policy


def test_field_rules() -> None:
    assert field_problems(model("m", model='a"b', backends=[{"backend": "a"}]))[0][0] == "spec.model"
    assert "add up to 0" in field_problems(model("m", model="m", backends=[{"backend": "a", "weight": 0}]))[0][1]
    assert "more than once" in field_problems(model("m", model="m", backends=[{"backend": "a"}, {"backend": "a"}]))[0][1]
    assert "fallback names" in field_problems(model("m", model="m", backends=[{"backend": "a"}], fallback=["a"]))[0][1]
    assert field_problems(model("m", model="m", backends=[]))[0][0] == "spec.backends"


def test_cross_object_rules_name_the_field() -> None:
    policy = build(CHAT, model("again", model="gpt-4o", backends=[{"backend": "a"}]),
                   model("lost", model="x", routes=["nope"], backends=[{"backend": "zz"}], fallback=["yy"]))
    assert [(p.loc, p.msg) for p in policy.problems()] == [
        ("models.chat.model", "Model 'again' already serves 'gpt-4o' in service 'llm'"),
        ("models.lost.routes.0", "service 'llm' has no route 'nope'"),
        ("models.lost.backends.0.backend", "unknown backend 'zz'"),
        ("models.lost.fallback.0", "unknown backend 'yy'"),
    ]
    assert build(CHAT).users_of_backend("c") == ["models.chat"]


def test_translation() -> None:
    policy = build(CHAT, EMBED)
    assert policy.problems() == []
    out = translate(policy, GROUP)
    assert snapshot_problems(out) == []
    (routes,) = out[types.ROUTE].values()
    (vhost,) = routes.virtual_hosts
    models_route, health, *model_routes, entry = vhost.routes
    # GET /v1/models from policy, first in the service.
    assert models_route.match.path == "/v1/models" and models_route.direct_response.status == 200
    assert json.loads(models_route.direct_response.body.inline_string) == {"object": "list", "data": [
        {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "sluice"},
        {"id": "text-embedding-3-small", "object": "model", "created": 0, "owned_by": "sluice"}]}
    # One copy of the entry route per (Model, backend), before it, under its name.
    assert [(r.name, r.match.prefix, r.match.headers[-1].string_match.exact, r.route.cluster) for r in model_routes] == [
        ("llm/openai", "/v1/", "chat/a", "model.chat.a"), ("llm/openai", "/v1/", "chat/b", "model.chat.b"),
        ("llm/openai", "/v1/", "embed/c", "c")]
    assert all(r.request_headers_to_remove == ["x-sluice-model"] for r in model_routes)
    assert {r.request_body_buffer_limit.value for r in [*model_routes, entry]} == {9 * 1024 * 1024}
    assert health.name == "llm/health" and not health.HasField("request_body_buffer_limit")
    # Fallback: the chosen backend at priority 0, the fallback at 1.
    assignment = out[types.ENDPOINT]["model.chat.b"]
    assert [(level.priority, level.lb_endpoints[0].endpoint.address.socket_address.port_value)
            for level in assignment.endpoints] == [(0, 8002), (1, 8003)]
    assert LLM in out[types.EXTENSION_CONFIG]
    assert llm_config(policy) == {
        "auth_routes": [], "keys": [], "budgets": [], "max_body_bytes": 8 * 1024 * 1024, "routes": ["llm/openai"], "models": [
        {"service": "llm", "name": "gpt-4o", "targets": [
            {"header": "chat/a", "weight": 90}, {"header": "chat/b", "weight": 10, "rewrite": "llama-3.1-8b"}]},
        {"service": "llm", "name": "text-embedding-3-small", "targets": [{"header": "embed/c", "weight": 100}]}]}


def test_no_models_no_filter_and_routes_unchanged() -> None:
    out = translate(build(), GROUP)
    assert LLM not in out[types.EXTENSION_CONFIG]
    (routes,) = out[types.ROUTE].values()
    assert [r.name for r in routes.virtual_hosts[0].routes] == ["llm/health", "llm/openai"]


def test_tenants_keys_reach_the_filter_hashed() -> None:
    key = "sk-test-" + "k" * 24
    policy = build(CHAT, {"kind": "Tenant", "name": "acme", "spec": {"keys": [{"id": "one", "key": key}]}})
    config = llm_config(policy)
    assert config["auth_routes"] == ["llm/models", "llm/openai"]
    assert config["keys"] == [{"sha256": hashlib.sha256(key.encode()).hexdigest(), "tenant": "acme"}]
    assert key not in str(translate(policy, GROUP)) and key not in str(policy.model_dump())
    assert build(CHAT, {"kind": "Tenant", "name": "other", "spec": {"keys": [{"id": "a", "key": key}]}},
                 {"kind": "Tenant", "name": "acme", "spec": {"keys": [{"id": "b", "key": key}]}}).problems()[0].loc \
        == "tenants.other.keys.0"


def test_priorities_per_key_or_tenant_reach_the_filter() -> None:
    tenant = {"kind": "Tenant", "name": "acme", "spec": {"priority": -1, "keys": [
        {"id": "batch", "sha256": "0" * 64}, {"id": "urgent", "sha256": "1" * 64, "priority": 5}]}}
    assert [k["priority"] for k in llm_config(build(CHAT, tenant))["keys"]] == [-1, 5]  # type: ignore[attr-defined]
    unset = {**tenant, "spec": {"keys": [{"id": "one", "sha256": "0" * 64}]}}
    assert "priority" not in llm_config(build(CHAT, unset))["keys"][0]  # type: ignore[index]
    assert field_problems({**tenant, "spec": {**tenant["spec"], "priority": 1001}})[0][0] == "spec.priority"
    assert field_problems({**tenant, "spec": {"keys": [{"id": "one", "sha256": "0" * 64, "priority": "high"}]}})[0][0] \
        == "spec.keys.0.priority"


def test_token_budgets() -> None:
    tenant = {"kind": "Tenant", "name": "acme", "spec": {"keys": [{"id": "one", "sha256": "0" * 64}]}}
    budget = {"kind": "TokenBudget", "name": "acme-chat", "spec": {
        "tenant": "acme", "model": "gpt-4o", "tokens": 1000, "soft_limit_percent": 80}}
    policy = build(CHAT, tenant, budget)
    assert policy.problems() == []
    assert llm_config(policy)["budgets"] == [{"name": "acme-chat", "tenant": "acme", "model": "gpt-4o", "tokens": 1000,
                                              "window_s": 60, "default_max_tokens": 256, "shadow": False,
                                              "soft_limit_percent": 80}]
    assert policy.users_of_tenant("acme") == ["tokenbudgets.acme-chat"]
    lost = build(CHAT, {**budget, "spec": {**budget["spec"], "tenant": "nobody", "model": "gpt-5"}})
    assert [p.loc for p in lost.problems()] == ["tokenbudgets.acme-chat.tenant", "tokenbudgets.acme-chat.model"]
    assert field_problems({**budget, "spec": {**budget["spec"], "per": "week"}})[0][0] == "spec.per"
    assert field_problems({**budget, "spec": {**budget["spec"], "per": "month", "zone": "Mars/Olympus"}})[0][0] \
        == "spec.zone"
    assert "counted in UTC" in field_problems({**budget, "spec": {**budget["spec"], "zone": "Europe/Berlin"}})[0][1]


def test_monthly_budget_is_global_and_admits_nothing_before_its_allowance() -> None:
    tenant = {"kind": "Tenant", "name": "acme", "spec": {"keys": [{"id": "one", "sha256": "0" * 64}]}}
    budget = {"kind": "TokenBudget", "name": "acme-month", "spec": {
        "tenant": "acme", "tokens": 100_000, "per": "month", "zone": "Europe/Berlin"}}
    policy = build(CHAT, tenant, budget)
    assert policy.problems() == []
    (base,) = llm_config(policy)["budgets"]  # type: ignore[misc]
    assert (base["window_id"], base["allowance"], base["window_s"]) == (1, 0, 30 * 86400)
    given = Allowance(window_id=1_800_000_000_000, tokens=4_000, window_end_s=1_796_079_600)
    (pushed,) = llm_config(policy, {"acme-month": given})["budgets"]  # type: ignore[misc]
    assert (pushed["window_id"], pushed["allowance"], pushed["window_end_s"]) == (1_800_000_000_000, 4_000, 1_796_079_600)
    configs = translate_shares(policy, {}, allowances={"acme-month": given})[types.EXTENSION_CONFIG]
    assert b'"allowance":4000' in configs[LLM].typed_config.value
