"""Apply a policy file through the admin API once, when the store is still empty (revision 0).

Used by `compose.yaml` (the one-shot `policy` service) and in Kubernetes (`kubectl exec` in
a control-plane pod); `sluice up` does the same for the local mesh. A store that already
holds a policy is left alone, so restarting the deployment never undoes an operator's change.

Backend endpoint addresses that are host names (a compose service, a Kubernetes Service) are
resolved to IPv4 addresses here, because Envoy takes only IP addresses in EDS endpoints.

  python deploy/seed_policy.py --server http://127.0.0.1:8080 -f policy.yaml [--wait 120]

Token: SLUICE_TOKEN, sent as `Authorization: Bearer ...` when set. Without one, the admin API
serves only loopback clients until the first token exists, so run this next to a replica
(compose shares controlplane-1's network namespace; in Kubernetes, `kubectl exec`).
Standard library and PyYAML only. Exit 0: applied, or nothing to do; 1: failed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def _request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
             ) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    token = os.environ.get("SLUICE_TOKEN")
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "X-Sluice-Actor": "seed-policy",
        **({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def resolve(documents: list[dict[str, Any]]) -> list[str]:
    """Replace host names in Backend endpoints by their IPv4 address; returns what was resolved."""
    done = []
    for doc in documents:
        if doc.get("kind") != "Backend":
            continue
        for endpoint in doc.get("spec", {}).get("endpoints", []):
            address = str(endpoint["address"])
            try:
                ipaddress.ip_address(address)
                continue
            except ValueError:
                pass
            ip = socket.getaddrinfo(address, endpoint.get("port"), socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
            endpoint["address"] = ip
            done.append(f"{doc['name']}: {address} -> {ip}")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="http://127.0.0.1:8080", help="admin API URL (default %(default)s)")
    p.add_argument("-f", "--filename", type=Path, required=True, help="YAML policy documents")
    p.add_argument("--wait", type=float, default=60, help="seconds to wait for the admin API (default %(default)s)")
    args = p.parse_args(argv)
    server = args.server.rstrip("/")

    deadline = time.monotonic() + args.wait
    while True:
        try:
            status, health = _request("GET", f"{server}/healthz")
            if status == 200:
                break
        except OSError as exc:
            status, health = 0, str(exc)
        if time.monotonic() > deadline:
            print(f"seed-policy: {server}/healthz did not answer 200 in {args.wait:.0f} s: {status} {health}",
                  file=sys.stderr)
            return 1
        time.sleep(1)
    if health["revision"] != 0:
        print(f"seed-policy: the store is at revision {health['revision']}; leaving the policy alone")
        return 0

    documents = [d for d in yaml.safe_load_all(args.filename.read_text()) if d]
    try:
        for line in resolve(documents):
            print(f"seed-policy: resolved {line}")
    except OSError as exc:
        print(f"seed-policy: cannot resolve a backend address: {exc}", file=sys.stderr)
        return 1
    # If-Match 0: if another writer got there first, its policy wins and this one is not applied.
    status, body = _request("POST", f"{server}/api/v1/apply", {"documents": documents}, {"If-Match": '"0"'})
    if status == 409:
        print("seed-policy: another writer applied a policy first; leaving it alone")
        return 0
    if status != 200:
        print(f"seed-policy: apply failed with {status}: {body}", file=sys.stderr)
        return 1
    print(f"seed-policy: applied {args.filename} as revision {body['revision']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
