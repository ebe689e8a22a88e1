"""`sluice apply | get | delete | status | history | diff | rollback | audit | token`: the admin API
from a terminal, like kubectl. `sluice token create --store URL` also works offline, on the store."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from controlplane.policy import KINDS as POLICY_KINDS

# Every policy kind by its singular and plural names (and kubectl's `svc`), from the model.
KINDS = {alias: kind.plural for kind in POLICY_KINDS.values() for alias in (kind.name.lower(), kind.plural)}
KINDS["svc"] = "services"


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", f"HTTP {status}"))
        self.status = status
        self.body = body


class CommandError(Exception):
    """A command failed for a reason its message states in full."""


class Client:
    def __init__(self, server: str, timeout: float = 10.0, *, token: str | None = None,
                 cafile: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json", "X-Sluice-Actor": "cli"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._context = ssl.create_default_context(cafile=cafile) if cafile else None

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server + path, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:
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
        result = client.call("POST", "/api/v1/apply" + ("?dry_run=true" if args.dry_run else ""), {"documents": docs})
    except ApiError as exc:
        print(_problems(exc, docs), file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"dry run against revision {result['revision']}: "
              + ("would change" if result["changed"] else "no change"))
        print(_object_changes(result["objects"]), end="")
        if result["resources"]:
            print("Envoy resources:")
            for r in result["resources"]:
                print(f"  {_MARK[r['change']]} {r['type']} {r['name']}")
        return 0
    names = ", ".join(f"{d.get('kind')}/{d.get('name')}" for d in docs)
    state = "applied" if result["changed"] else "unchanged"
    print(f"revision {result['revision']}: {state} {names}")
    return wait_for_proxies(client, result["revision"], args.timeout) if args.wait else 0


def wait_for_proxies(client: Client, revision: int, timeout: float) -> int:
    """Until every connected proxy runs `revision` (or a later one): then the change is in its traffic."""
    deadline = time.monotonic() + timeout
    while True:
        proxies = client.call("GET", "/api/v1/proxies")["proxies"]
        behind = [p["node_id"] for p in proxies if (p["revision"] or 0) < revision]
        if not behind:
            print(f"revision {revision}: running on {len(proxies)} prox{'y' if len(proxies) == 1 else 'ies'}")
            return 0
        if time.monotonic() >= deadline:
            print(f"error: after {timeout:g} s, {', '.join(behind)} still not at revision {revision}; "
                  "`sluice status` shows what each proxy runs and any config it rejected", file=sys.stderr)
            return 1
        time.sleep(0.1)


_MARK = {"added": "+", "removed": "-", "changed": "~"}


def _object_changes(objects: list[dict[str, Any]]) -> str:
    lines = []
    for o in objects:
        lines.append(f"  {_MARK[o['change']]} {o['kind']} {o['name']}")
        for f in o.get("fields", []):
            lines.append(f"      {f['path']}: {json.dumps(f['from'])} -> {json.dumps(f['to'])}")
    return "".join(line + "\n" for line in lines)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def history(client: Client, args: argparse.Namespace) -> int:
    revisions = client.call("GET", f"/api/v1/revisions?limit={args.limit}")["revisions"]
    print(f"{'REVISION':<9} {'WHEN':<20} {'ACTOR':<20} MESSAGE")
    for r in revisions:
        print(f"{r['number']:<9} {_when(r['created_at']):<20} {r['actor']:<20} {r['message']}")
    return 0


def diff(client: Client, args: argparse.Namespace) -> int:
    result = client.call("GET", f"/api/v1/revisions/{args.a}/diff/{args.b}")
    print(f"revision {result['from']} -> {result['to']}:" + ("" if result["objects"] else " no change"))
    print(_object_changes(result["objects"]), end="")
    return 0


def rollback(client: Client, args: argparse.Namespace) -> int:
    result = client.call("POST", f"/api/v1/revisions/{args.revision}/rollback")
    state = "rolled back" if result["changed"] else "already"
    print(f"revision {result['revision']}: {state} to the content of revision {args.revision}")
    return 0


def audit(client: Client, args: argparse.Namespace) -> int:
    for e in client.call("GET", f"/api/v1/audit?limit={args.limit}")["entries"]:
        revision = f"revision {e['revision']}: " if e["revision"] is not None else ""
        print(f"{_when(e['at'])} {e['actor']:<20} {revision}{e['message']}")
    return 0


def _duration(text: str) -> float:
    """`90`, `90s`, `15m`, `12h`, `30d` -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 3600, 15m, 12h or 30d, not {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def token_create(client: Client, args: argparse.Namespace) -> int:
    """Prints the secret alone on stdout (once: only its digest is stored), the rest on stderr."""
    name = args.name or f"{args.role}-{datetime.now():%Y%m%d-%H%M%S}"
    if args.store:
        secret = asyncio.run(_create_offline(args.store, name, args.role, args.expires_in))
    else:
        body: dict[str, Any] = {"name": name, "role": args.role}
        if args.expires_in is not None:
            body["expires_in_s"] = args.expires_in
        secret = client.call("POST", "/api/v1/tokens", body)["token"]
    expiry = "never expires" if args.expires_in is None else f"expires in {args.expires_in:g} s"
    print(f"created token {name} (role {args.role}, {expiry}); it is shown only now", file=sys.stderr)
    print(secret)
    return 0


async def _create_offline(url: str, name: str, role: str, expires_in_s: float | None) -> str:
    # Imported here: the other commands only talk HTTP and need none of the control plane.
    from controlplane.auth import issue
    from controlplane.store import StoreUnavailable, TokenExists, open_store

    secret, record = issue(name, role, created_by=f"cli:{getpass.getuser()}", expires_in_s=expires_in_s)
    try:
        store = await open_store(url)
        try:
            await store.add_token(record)
        finally:
            await store.close()
    except (StoreUnavailable, TokenExists) as exc:
        raise CommandError(str(exc)) from None
    return secret


def token_list(client: Client, _: argparse.Namespace) -> int:
    print(f"{'NAME':<24} {'ROLE':<9} {'CREATED':<20} {'BY':<20} EXPIRES")
    for t in client.call("GET", "/api/v1/tokens")["tokens"]:
        expires = "never" if t["expires_at"] is None else _when(t["expires_at"])
        print(f"{t['name']:<24} {t['role']:<9} {_when(t['created_at']):<20} {t['created_by']:<20} {expires}")
    return 0


def token_revoke(client: Client, args: argparse.Namespace) -> int:
    client.call("DELETE", f"/api/v1/tokens/{args.name}")
    print(f"revoked token {args.name}")
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
        limited = ",".join(spec["routes"]) or "all routes"
        shadow = " (shadow)" if spec["shadow"] else ""
        return f"{spec['service']} [{limited}] {spec['rate']}/s burst {spec['burst']} per {key}{shadow}"
    if doc["kind"] == "Edge":
        return f"xff_trusted_hops={spec['xff_trusted_hops']}"
    return ""


def _plural(kind: str) -> str:
    try:
        return KINDS[kind.lower()]
    except KeyError:
        known = ", ".join(k.name.lower() for k in POLICY_KINDS.values())
        raise SystemExit(f"error: unknown kind {kind!r}; expected one of: {known}") from None


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


PAGE = 1000  # proxies per admin API request


def _proxies(client: Client, state: str | None, limit: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fleet's summary and its proxies (of `state`), at most `limit` (None: all, page by page)."""
    chosen: list[dict[str, Any]] = []
    while True:
        page = min(PAGE, limit - len(chosen)) if limit is not None else PAGE
        query = urllib.parse.urlencode({"offset": len(chosen), "limit": max(page, 1), **({"state": state} if state else {})})
        fleet = client.call("GET", f"/api/v1/proxies?{query}")
        chosen += fleet["proxies"][:page]
        if len(chosen) >= fleet["matching"] or (limit is not None and len(chosen) >= limit) or not fleet["proxies"]:
            return fleet["summary"], chosen


def status(client: Client, args: argparse.Namespace) -> int:
    """A line on the whole fleet, then the proxies a person should look at first: those that
    refused config, then those behind; the whole table only for a small fleet or with --all."""
    health = client.call("GET", "/healthz")
    listing_all = args.all or args.state is not None
    summary, proxies = _proxies(client, args.state, None if listing_all else args.limit)
    if not listing_all and summary["total"] > args.limit:  # a fleet: those to look at first
        proxies = _proxies(client, "nacked", args.limit)[1]
        if len(proxies) < args.limit:
            proxies += _proxies(client, "behind", args.limit - len(proxies))[1]
    protocols = ", ".join(f"{n} {p}" for p, n in sorted(summary["protocols"].items()))
    print(f"control plane {client.server}: revision {health['revision']}, "
          f"{summary['total']} proxies connected{f' ({protocols})' if protocols else ''}, "
          f"{summary['current']} converged, {summary['behind']} behind, {summary['nacked']} rejecting config")
    if not proxies:
        return 0
    types = ["cds", "eds", "ecds", "lds", "srds", "rds"]
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
    if (left := (summary["total"] if not args.state else summary[args.state]) - len(proxies)) > 0:
        print(f"... {left} more not shown (--all lists every proxy, --state current|behind|nacked one state)")
    return 0


def with_server(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every command that talks to the admin API takes."""
    p.add_argument("--server", default=os.environ.get("SLUICE_SERVER", "http://127.0.0.1:8080"),
                   help="admin API URL (default: $SLUICE_SERVER, else %(default)s)")
    p.add_argument("--token", default=os.environ.get("SLUICE_TOKEN"),
                   help="bearer token for the admin API (default: $SLUICE_TOKEN)")
    p.add_argument("--cacert", default=os.environ.get("SLUICE_CACERT"),
                   help="PEM CA that signed an https admin API's certificate (default: $SLUICE_CACERT)")
    return p


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = with_server(sub.add_parser("apply", help="create or update policy objects from a YAML file"))
    p.add_argument("-f", "--filename", required=True, help="YAML file of documents, or - for stdin")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and show what would change (objects and Envoy resources); store nothing")
    p.add_argument("--wait", action="store_true",
                   help="return once every connected proxy runs the new revision (its traffic follows it)")
    p.add_argument("--timeout", type=float, default=30.0, help="how long --wait waits, in seconds (default 30)")
    p.set_defaults(client_command=apply)
    p = with_server(sub.add_parser("get", help="show policy objects"))
    p.add_argument("kind", nargs="?", help="a policy kind such as service or ratelimit (default: everything)")
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    p.set_defaults(client_command=get)
    p = with_server(sub.add_parser("delete", help="delete policy objects"))
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("-f", "--filename", help="delete the objects named in this YAML file")
    p.set_defaults(client_command=delete)
    p = with_server(sub.add_parser("status", help="control plane revision and the proxies' sync state"))
    p.add_argument("--limit", type=int, default=20,
                   help="proxies listed when the fleet is larger, those refusing config or behind first "
                        "(default %(default)s)")
    p.add_argument("--all", action="store_true", help="list every proxy")
    p.add_argument("--state", choices=["current", "behind", "nacked"], help="list every proxy in this state")
    p.set_defaults(client_command=status)
    p = with_server(sub.add_parser("history", help="policy revisions, newest first"))
    p.add_argument("--limit", type=int, default=20, help="how many (default %(default)s)")
    p.set_defaults(client_command=history)
    p = with_server(sub.add_parser("diff", help="what changed between two revisions, object by object and by field"))
    p.add_argument("a", type=int, help="from this revision")
    p.add_argument("b", type=int, help="to this revision")
    p.set_defaults(client_command=diff)
    p = with_server(sub.add_parser("rollback", help="make a new revision with the content of an old one"))
    p.add_argument("revision", type=int)
    p.set_defaults(client_command=rollback)
    p = with_server(sub.add_parser("audit", help="the audit log: who changed what, and when"))
    p.add_argument("--limit", type=int, default=20, help="how many entries (default %(default)s)")
    p.set_defaults(client_command=audit)
    token = sub.add_parser("token", help="admin API tokens: create, list, revoke")
    actions = token.add_subparsers(title="token commands", metavar="ACTION", required=True)
    p = with_server(actions.add_parser("create", help="create a token and print its secret (shown only once)"))
    p.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    p.add_argument("--name", help="the token's name, recorded as the actor of its changes (default ROLE-TIME)")
    p.add_argument("--expires-in", type=_duration, metavar="DURATION", help="e.g. 3600, 15m, 12h, 30d (default never)")
    p.add_argument("--store", help="write to this store directly, with no control plane running (bootstrap): "
                                   "sqlite:///PATH or redis://HOST:PORT/DB")
    p.set_defaults(client_command=token_create)
    p = with_server(actions.add_parser("list", help="every token (names and roles, never secrets)"))
    p.set_defaults(client_command=token_list)
    p = with_server(actions.add_parser("revoke", help="delete a token; it stops working on every replica"))
    p.add_argument("name")
    p.set_defaults(client_command=token_revoke)


def run(args: argparse.Namespace) -> int:
    client = Client(args.server, token=args.token, cafile=args.cacert)
    try:
        return int(args.client_command(client, args))
    except urllib.error.URLError as exc:
        print(f"error: cannot reach the control plane at {args.server}: {exc.reason}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(_problems(exc), file=sys.stderr)
        return 1
    except (CommandError, OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
