"""Geo table uploads through a real control plane's admin API, and the blobs behind them in both
stores (SQLite, and a real Redis)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

from harness import ControlPlane, Envoy, get_json, http
from mmdb_writer import country_record, write_mmdb

GEO = {"kind": "Geo", "name": "geo", "spec": {"default_region": "us", "countries": {"DE": "eu"},
                                               "prefixes": [{"cidr": "10.0.0.0/8", "region": "ap"}]}}
CSV = b"cidr,country,region\n198.51.100.0/24,DE,\n203.0.113.0/24,US,us\n2001:db8::/32,JP,ap\n"


def upload(cp: ControlPlane, body: bytes, content_type: str = "text/csv", query: str = "",
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    status, _, raw = http("POST", f"{cp.url}/api/v1/geo/table{query}", body,
                          {"Content-Type": content_type, **(headers or {})}, timeout=30)
    return status, json.loads(raw)


def geo_spec(cp: ControlPlane) -> dict[str, Any]:
    return dict(get_json(f"{cp.url}/api/v1/geo/geo")["spec"])


def test_upload_needs_the_geo_object_and_a_known_format(controlplane: ControlPlane) -> None:
    status, body = upload(controlplane, CSV)
    assert status == 409 and "apply the Geo object" in body["error"]
    assert upload(controlplane, CSV, "application/json")[0] == 415


def test_a_bad_csv_changes_nothing_and_names_its_lines(controlplane: ControlPlane) -> None:
    assert controlplane.apply(GEO)[0] == 200
    revision = controlplane.revision()
    status, body = upload(controlplane, CSV + b"10.1.2.3/16,DE,eu\n192.0.2.0/24,XYZ,\n")
    assert status == 422
    assert body["error"] == "the csv table was refused; nothing was applied"
    assert [p["loc"] for p in body["problems"]] == ["line 5", "line 6"]
    assert controlplane.revision() == revision
    assert geo_spec(controlplane)["table"] is None


def test_an_upload_replaces_the_inline_table_in_one_revision(controlplane: ControlPlane) -> None:
    assert controlplane.apply(GEO)[0] == 200
    status, body = upload(controlplane, CSV)
    assert status == 200, body
    assert (body["changed"], body["ipv4_prefixes"], body["ipv6_prefixes"]) == (True, 2, 1)
    spec = geo_spec(controlplane)
    assert spec["table"] == body["table"] and spec["prefixes"] == []
    info = get_json(f"{controlplane.url}/api/v1/geo/table/info")
    assert (info["source"], info["table"], info["revision"]) == ("uploaded", body["table"], body["revision"])
    assert {(x["country"], x["region"]) for x in info["label_regions"]} == {("DE", "eu"), ("US", "us"), ("JP", "ap")}
    # The same table again is no change; a stale If-Match is a conflict.
    status, again = upload(controlplane, CSV.replace(b"cidr,country,region\n", b""))
    assert (status, again["changed"], again["revision"]) == (200, False, body["revision"])
    status, _ = upload(controlplane, b"10.0.0.0/8,DE,\n", headers={"If-Match": f'"{body["revision"] - 1}"'})
    assert status == 409


def test_mmdb_upload_maps_countries_to_regions(controlplane: ControlPlane) -> None:
    assert controlplane.apply(GEO)[0] == 200
    database = write_mmdb([(ipaddress.ip_network("198.51.100.0/24"), country_record("DE")),
                           (ipaddress.ip_network("2001:db8::/32"), country_record("BR"))])
    status, body = upload(controlplane, database, "application/octet-stream")
    assert status == 200, body
    info = get_json(f"{controlplane.url}/api/v1/geo/table/info")
    assert {(x["country"], x["region"], x["region_in_table"]) for x in info["label_regions"]} == {
        ("DE", "eu", ""), ("BR", "us", "")}  # BR is not mapped: the default region
    status, body = upload(controlplane, b"definitely not a database", query="?format=mmdb")
    assert status == 422 and "not a MaxMind DB" in body["problems"][0]["msg"]


def test_a_restarted_control_plane_loads_the_table_from_the_store(
        controlplane: ControlPlane, start_envoy: Callable[..., Envoy]) -> None:
    assert controlplane.apply(GEO)[0] == 200
    assert upload(controlplane, CSV)[0] == 200
    controlplane.restart()  # nothing in memory: the blob comes from SQLite
    envoy = start_envoy(controlplane)
    # Converging means Envoy ACKed the georoute config (without the table there would be none).
    controlplane.wait_converged(envoy.node_id)
    dump = envoy.config_dump("ecds_filters")
    assert "sluice.georoute" in json.dumps(dump)
