"""`sluice apikey create TENANT | list TENANT | revoke TENANT ID`: tenants' API keys for the edge."""

from __future__ import annotations

import argparse
import sys

from sluice.client import Client, with_server


def create(client: Client, args: argparse.Namespace) -> int:
    """Prints the key alone on stdout (once: only its SHA-256 is stored), the rest on stderr."""
    answer = client.call("POST", f"/api/v1/tenants/{args.tenant}/keys", {"id": args.id} if args.id else {})
    print(f"created key {answer['id']} of tenant {answer['tenant']} (revision {answer['revision']}); "
          "it is shown only now", file=sys.stderr)
    print(answer["key"])
    return 0


def list_keys(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("GET", f"/api/v1/tenants/{args.tenant}/keys")
    for key in answer["keys"]:
        print(key["id"])
    return 0


def revoke(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("DELETE", f"/api/v1/tenants/{args.tenant}/keys/{args.id}")
    print(f"revoked key {args.id} of tenant {args.tenant} (revision {answer['revision']})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    apikey = sub.add_parser("apikey", help="tenants' API keys for the edge: create, list, revoke")
    actions = apikey.add_subparsers(title="apikey commands", metavar="ACTION", required=True)
    p = with_server(actions.add_parser("create", help="create a key (and the tenant if new); the key is shown only once"))
    p.add_argument("tenant")
    p.add_argument("--id", help="the key's id (default key-N)")
    p.set_defaults(client_command=create)
    p = with_server(actions.add_parser("list", help="a tenant's key ids (never the keys)"))
    p.add_argument("tenant")
    p.set_defaults(client_command=list_keys)
    p = with_server(actions.add_parser("revoke", help="delete a key; the edge refuses it within a second"))
    p.add_argument("tenant")
    p.add_argument("id")
    p.set_defaults(client_command=revoke)
