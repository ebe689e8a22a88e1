"""`sluice apply | get | delete | status`: the admin API from a terminal, like kubectl."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

KINDS = {
    **{k: "backends" for k in ("backend", "backends")},
    **{k: "services" for k in ("service", "services", "svc")},
    **{k: "ratelimits" for k in ("ratelimit", "ratelimits")},
    **{k: "edges" for k in ("edge", "edges")},
    **{k: "canaries" for k in ("canary", "canaries")},
}


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", f"HTTP {status}"))
        self.status = status
        self.body = body


class Client:
    def __init__(self, server: str, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", "X-Sluice-Actor": "cli"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except json.JSONDecodeError:
                payload = {"error": f"HTTP {exc.code}"}
            raise ApiError(exc.code, payload) from None


def load_documents(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _problems(exc: ApiError, docs: list[dict[str, Any]] | None = None) -> str:
    lines = [f"error: {exc}"]
    for p in exc.body.get("problems", []):
        loc: str = p["loc"]
        if docs is not None and loc.startswith("documents."):
            index, _, rest = loc.removeprefix("documents.").partition(".")
            doc = docs[int(index)] if index.isdigit() and int(index) < len(docs) else {}
            loc = f"{doc.get('kind', '?')} {doc.get('name', '?')}: {rest or '(document)'}"
        lines.append(f"  {loc}: {p['msg']}")
    return "\n".join(lines)


def apply(client: Client, args: argparse.Namespace) -> int:
    docs = load_documents(args.filename)
    try:
        result = client.call("POST", "/api/v1/apply", {"documents": docs})
    except ApiError as exc:
        print(_problems(exc, docs), file=sys.stderr)
        return 1
    names = ", ".join(f"{d.get('kind')}/{d.get('name')}" for d in docs)
    state = "applied" if result["changed"] else "unchanged"
    print(f"revision {result['revision']}: {state} {names}")
    return 0


def get(client: Client, args: argparse.Namespace) -> int:
    if args.kind is None:
        docs = client.call("GET", "/api/v1/policy")["documents"]
    elif args.name is None:
        docs = client.call("GET", f"/api/v1/{_plural(args.kind)}")["items"]
    else:
        try:
            docs = [client.call("GET", f"/api/v1/{_plural(args.kind)}/{args.name}")]
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.output == "yaml":
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    elif args.output == "json":
        print(json.dumps(docs, indent=2))
    else:
        print(f"{'KIND':<10} {'NAME':<24} DETAIL")
        for d in docs:
            print(f"{d['kind']:<10} {d['name']:<24} {_detail(d)}")
    return 0


def _detail(doc: dict[str, Any]) -> str:
    spec = doc["spec"]
    if doc["kind"] == "Backend":
        return ", ".join(f"{e['address']}:{e['port']}" for e in spec["endpoints"])
    if doc["kind"] == "Service":
        routes = []
        for r in spec["routes"]:
            match = next(f"{k}={v}" for k, v in r["match"].items() if k != "headers" and v is not None)
            split = " ".join(f"{w['backend']}:{w['weight']}" for w in r["split"])
            routes.append(f"{r['name']} [{match}] -> {split}")
        return "; ".join(routes)
    if doc["kind"] == "RateLimit":
        key = "+".join(k["name"] if k["type"] == "header" else k["type"] for k in spec["key"]) or "everyone"
        routes = ",".join(spec["routes"]) or "all routes"
        shadow = " (shadow)" if spec["shadow"] else ""
        return f"{spec['service']} [{routes}] {spec['rate']}/s burst {spec['burst']} per {key}{shadow}"
    if doc["kind"] == "Edge":
        return f"xff_trusted_hops={spec['xff_trusted_hops']}"
    return ""


def _plural(kind: str) -> str:
    try:
        return KINDS[kind.lower()]
    except KeyError:
        raise SystemExit(f"error: unknown kind {kind!r}; expected one of: backend, service, ratelimit, edge") from None


def delete(client: Client, args: argparse.Namespace) -> int:
    targets = ([(d["kind"], d["name"]) for d in load_documents(args.filename)] if args.filename
               else [(args.kind, args.name)])
    if any(k is None or n is None for k, n in targets):
        print("error: give KIND NAME or -f FILE", file=sys.stderr)
        return 2
    status = 0
    for kind, name in targets:
        try:
            result = client.call("DELETE", f"/api/v1/{_plural(kind)}/{name}")
            print(f"revision {result['revision']}: deleted {kind.lower()}/{name}")
        except ApiError as exc:
            print(f"error: {kind.lower()}/{name}: {exc}", file=sys.stderr)
            status = 1
    return status


def status(client: Client, _: argparse.Namespace) -> int:
    health = client.call("GET", "/healthz")
    fleet = client.call("GET", "/api/v1/proxies")
    proxies = fleet["proxies"]
    converged = sum(1 for p in proxies if p["revision"] == health["revision"])
    print(f"control plane {client.server}: revision {health['revision']}, "
          f"{len(proxies)} proxies connected, {converged} converged")
    if not proxies:
        return 0
    types = ["cds", "eds", "ecds", "lds", "rds"]
    print(f"{'NODE':<28} {'CLUSTER':<10} {'REVISION':<9} " + " ".join(f"{t.upper():<17}" for t in types))
    for p in proxies:
        cells = []
        for t in types:
            s = p["types"].get(t)
            cells.append("-" if s is None else (s["acked_version"] or "…") + (" NACK" if s["last_nack"] else ""))
        rev = "-" if p["revision"] is None else str(p["revision"])
        print(f"{p['node_id']:<28} {p['cluster']:<10} {rev:<9} " + " ".join(f"{c:<17}" for c in cells))
    for p in proxies:
        for t, s in p["types"].items():
            if s["last_nack"]:
                print(f"{p['node_id']} rejected {t} {s['last_nack']['version']}: {s['last_nack']['message']}")
    return 0


def with_server(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every command that talks to the admin API takes."""
    p.add_argument("--server", default="http://127.0.0.1:8080", help="admin API URL (default %(default)s)")
    return p


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = with_server(sub.add_parser("apply", help="create or update policy objects from a YAML file"))
    p.add_argument("-f", "--filename", required=True, help="YAML file of documents, or - for stdin")
    p.set_defaults(client_command=apply)
    p = with_server(sub.add_parser("get", help="show policy objects"))
    p.add_argument("kind", nargs="?", help="backend, service, ratelimit or edge (default: everything)")
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    p.set_defaults(client_command=get)
    p = with_server(sub.add_parser("delete", help="delete policy objects"))
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("-f", "--filename", help="delete the objects named in this YAML file")
    p.set_defaults(client_command=delete)
    p = with_server(sub.add_parser("status", help="control plane revision and every proxy's sync state"))
    p.set_defaults(client_command=status)


def run(args: argparse.Namespace) -> int:
    client = Client(args.server)
    try:
        return int(args.client_command(client, args))
    except urllib.error.URLError as exc:
        print(f"error: cannot reach the control plane at {args.server}: {exc.reason}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(_problems(exc), file=sys.stderr)
        return 1
    except (OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
