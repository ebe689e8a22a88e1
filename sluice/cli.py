"""The `sluice` command: each component runs alone, plus kubectl-like policy commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from sluice import apikey_cli, canary_cli, client, geo_cli

# Components parse their own flags; importing one does not import the others, so the
# backend and the control plane stay independent programs.
COMPONENTS = {
    "controlplane": ("controlplane.main", "run the xDS control plane and admin API"),
    "backend": ("inference.main", "run the inference backend (KServe v2 / Open Inference Protocol)"),
    "envoy": ("sluice.proxy", "write a bootstrap pointing at the control plane and run Envoy"),
    "up": ("sluice.mesh", "run the whole local mesh: control plane, edge Envoy, two backends"),
}


def policy_parser() -> argparse.ArgumentParser:
    """The commands that talk to the admin API (the components parse their own flags)."""
    parser = argparse.ArgumentParser(prog="sluice", description="A traffic layer for AI inference.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (_, summary) in COMPONENTS.items():
        sub.add_parser(name, help=summary + f" (see `sluice {name} --help`)")
    client.add_commands(sub)
    canary_cli.add_commands(sub)
    geo_cli.add_commands(sub)
    apikey_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMPONENTS:
        module = importlib.import_module(COMPONENTS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    parser = policy_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "client_command"):
        parser.print_help()
        return 2
    return client.run(args)
