"""`sluice canary ...`: list canaries, act on one, or watch it progress live."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import Any

from sluice.client import Client, with_server


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S")


def _window(side: dict[str, Any] | None) -> str:
    if not side or not side["requests"]:
        return "no traffic yet"
    p99 = "-" if side["p99_ms"] is None else f"≤{side['p99_ms']:g} ms"
    return f"{side['requests']} req, success {side['success_rate']:.1%}, p99 {p99}"


def _shadow(figures: dict[str, Any]) -> str:
    attempts = figures["compared"] + figures["candidate_errors"] + figures["incomparable"]
    parts = [f"{attempts} compared"]
    if figures["agreement"] is not None:
        what = "exact match" if figures["generations"] else "agreement"
        parts.append(f"{what} {figures['agreement']:.2%}")
    if figures["max_abs_diff"] is not None:
        parts.append(f"max |diff| {figures['max_abs_diff']:.3g}, cosine ≥ {figures['min_cosine']:.4f}")
    if figures["mean_prefix_tokens"] is not None:
        parts.append(f"common prefix {figures['mean_prefix_tokens']:.1f} tokens")
    if figures["candidate_errors"]:
        parts.append(f"candidate errors {figures['candidate_errors']}")
    if figures["dropped"]:
        parts.append(f"dropped {figures['dropped']}")
    return ", ".join(parts)


def _versus(ratios: dict[str, Any]) -> str:
    parts = []
    if ratios["p99_ratio"] is not None:
        parts.append(f"p99 {ratios['p99_ratio']:.2f}x stable")
    if ratios["success_rate_drop"] is not None:
        parts.append(f"success {-ratios['success_rate_drop']:+.2%} vs stable")
    return ", ".join(parts) or "no traffic on both yet"


def render(body: dict[str, Any], now: float) -> str:
    status, spec = body["status"], body["spec"]
    steps = " → ".join(f"[{w}]" if i == status["step"] else str(w) for i, w in enumerate(body["steps"]))
    lines = [
        f"canary {body['name']}: {status['state']}  weight {status['weight']}% "
        f"({spec['canary']}) / {100 - status['weight']}% ({spec['stable']})",
        f"  stage {status.get('stage') or '-'}; steps {steps}; interval {spec['interval_s']:g} s; failed checks "
        f"{status['failed_checks']}/{spec['failure_limit']}",
    ]
    window = body.get("window")
    if window:
        if window.get("shadow") is not None:
            lines.append(f"  shadow  {_shadow(window['shadow'])}")
        lines.append(f"  canary  {_window(window['canary'])}")
        lines.append(f"  stable  {_window(window['stable'])}")
        if window.get("vs_stable") and status.get("stage") != "shadow":
            lines.append(f"  canary vs stable: {_versus(window['vs_stable'])}")
        generation = window.get("generation")
        if generation and generation["canary"]["ttft_ms"] and generation["stable"]["ttft_ms"]:
            lines.append(f"  TTFT {generation['canary']['ttft_ms']:.1f} ms vs stable "
                         f"{generation['stable']['ttft_ms']:.1f} ms (last window)")
        if window["last_verdict"]:
            verdict = window["last_verdict"]
            gate = f" [{verdict['gate']}]" if verdict.get("gate") else ""
            lines.append(f"  last verdict: {verdict['verdict']}{gate} ({verdict['reason']})")
        lines.append(f"  next decision in {max(0.0, window['next_decision_at'] - now):.1f} s")
    for event in status["events"][-5:]:
        gate = f" [{event['gate']}]" if event.get("gate") else ""
        lines.append(f"  {_when(event['at'])} {event['state']:<12} {event['weight']:>3}%  {event['message']}{gate}")
    return "\n".join(lines)


def list_canaries(client: Client, _: argparse.Namespace) -> int:
    items = client.call("GET", "/api/v1/canaries")["items"]
    print(f"{'NAME':<20} {'STATE':<12} {'WEIGHT':<7} ROUTE")
    for item in items:
        body = client.call("GET", f"/api/v1/canaries/{item['name']}/status")
        spec, status = body["spec"], body["status"]
        print(f"{item['name']:<20} {status['state']:<12} {status['weight']:>3}%    "
              f"{spec['service']}/{spec['route']} {spec['stable']} → {spec['canary']}")
    return 0


def show(client: Client, args: argparse.Namespace) -> int:
    print(render(client.call("GET", f"/api/v1/canaries/{args.name}/status"), time.time()))
    return 0


def act(client: Client, args: argparse.Namespace) -> int:
    result = client.call("POST", f"/api/v1/canaries/{args.name}/{args.canary_action}", {})
    status = result["status"]
    print(f"revision {result['revision']}: canary {args.name} {status['state']} at {status['weight']}%")
    return 0


def watch(client: Client, args: argparse.Namespace) -> int:
    """Redraws the status until the canary finishes (or Ctrl-C)."""
    interactive = sys.stdout.isatty()
    try:
        while True:
            body = client.call("GET", f"/api/v1/canaries/{args.name}/status")
            text = render(body, time.time())
            if interactive:
                sys.stdout.write("\x1b[H\x1b[J")
            sys.stdout.write(text + "\n" + ("" if interactive else "\n"))
            sys.stdout.flush()
            if body["status"]["state"] in ("succeeded", "rolled_back"):
                return 0 if body["status"]["state"] == "succeeded" else 1
            time.sleep(args.every)
    except KeyboardInterrupt:
        return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    canary = sub.add_parser("canary", help="list canaries, pause/resume/promote/abort one, or watch it live")
    actions = canary.add_subparsers(title="canary commands", metavar="ACTION", required=True)
    p = with_server(actions.add_parser("list", help="every canary with its state and weight"))
    p.set_defaults(client_command=list_canaries)
    p = with_server(actions.add_parser("status", help="one canary: weights, live analysis, recent events"))
    p.add_argument("name")
    p.set_defaults(client_command=show)
    for action, text in (("pause", "hold the current weight"), ("resume", "continue a paused canary"),
                         ("promote", "skip the remaining steps: all traffic to the canary"),
                         ("abort", "roll back now: all traffic to the stable backend")):
        p = with_server(actions.add_parser(action, help=text))
        p.add_argument("name")
        p.set_defaults(client_command=act, canary_action=action)
    p = with_server(actions.add_parser("watch", help="show progress as it happens until the canary finishes"))
    p.add_argument("name")
    p.add_argument("--every", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.set_defaults(client_command=watch)
