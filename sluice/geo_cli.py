"""`sluice geo upload FILE | show`: the edge's geo table through the admin API."""

from __future__ import annotations

import argparse
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from sluice.client import ApiError, Client, with_server

CONTENT_TYPES = {"csv": "text/csv", "mmdb": "application/octet-stream"}


def upload(_: Client, args: argparse.Namespace) -> int:
    path = Path(args.file)
    fmt = args.format or ("mmdb" if path.suffix == ".mmdb" else "csv")
    headers = {"Content-Type": CONTENT_TYPES[fmt], "X-Sluice-Actor": "cli"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    # The JSON client does not send files: the same server, token and CA, with the raw bytes.
    request = urllib.request.Request(f"{args.server.rstrip('/')}/api/v1/geo/table", data=path.read_bytes(),
                                     method="POST", headers=headers)
    context = ssl.create_default_context(cafile=args.cacert) if args.cacert else None
    try:
        with urllib.request.urlopen(request, timeout=300, context=context) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ApiError(exc.code, json.loads(exc.read() or b"{}")) from None
    print(f"revision {body['revision']}{'' if body['changed'] else ' (unchanged)'}: table {body['table']}, "
          f"{body['ipv4_prefixes']} IPv4 and {body['ipv6_prefixes']} IPv6 prefixes, "
          f"{body['labels']} country/region pairs")
    return 0


def show(client: Client, _: argparse.Namespace) -> int:
    info = client.call("GET", "/api/v1/geo/table/info")
    print(f"{info['source']} table {info['table']} (revision {info['revision']}): {info['ipv4_prefixes']} IPv4 and "
          f"{info['ipv6_prefixes']} IPv6 prefixes; unmatched clients: region {info['default_region']}")
    print(f"{'COUNTRY':<8} REGION")
    for label in info["label_regions"]:
        note = "" if label["region_in_table"] else "   (from countries / default)"
        print(f"{label['country'] or '-':<8} {label['region']}{note}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    geo = sub.add_parser("geo", help="upload the edge's geo table (CSV or MaxMind DB) or show it")
    actions = geo.add_subparsers(title="geo commands", metavar="ACTION", required=True)
    p = with_server(actions.add_parser("upload", help="replace the geo table: cidr,country,region CSV or .mmdb"))
    p.add_argument("file")
    p.add_argument("--format", choices=sorted(CONTENT_TYPES), help="default: mmdb for *.mmdb, else csv")
    p.set_defaults(client_command=upload)
    p = with_server(actions.add_parser("show", help="the table in force and the region of each country"))
    p.set_defaults(client_command=show)
