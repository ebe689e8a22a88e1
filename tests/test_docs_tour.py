"""The tour (docs/tour.md, the same blocks as the README's) runs as written against a fresh
`sluice up`, then the geo page's example in the same order (a finished canary released the
route); a second `sluice up` on the same store says it reuses the stored policy.

Only addresses change: the mesh runs on free ports, so the edge URL, the admin API
(SLUICE_SERVER) and the examples' backend ports are rewritten to the ones chosen here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from docs_blocks import ROOT, Block, blocks
from harness import PYTHON, Proc, free_port, wait_until


def _start_mesh(tmp_path: Path, ports: dict[str, int], model_repository: Path, name: str) -> Proc:
    return Proc(name, [PYTHON, "-m", "sluice", "up", "--model-repository", str(model_repository),
                       "--store", f"sqlite:///{tmp_path / 'tour.db'}", "--xds-port", str(ports["xds"]),
                       "--admin-port", str(ports["admin"]), "--listen-port", str(ports["listen"]),
                       "--envoy-admin-port", str(ports["envoy_admin"]),
                       "--backend-ports", f"{ports['v1']},{ports['v2']}", "--llm-port", str(ports["llm"]),
                       "--logs", str(tmp_path / name)],
                tmp_path / f"{name}.log").start()


def _stop_mesh(mesh: Proc) -> None:
    """SIGINT, as Ctrl-C: `sluice up` stops each of its children by pid."""
    assert mesh.popen is not None
    if mesh.popen.poll() is None:
        os.kill(mesh.pid, signal.SIGINT)
        try:
            mesh.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            mesh.kill()


def _examples(tmp_path: Path, ports: dict[str, int]) -> Path:
    out = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", out)
    for path in out.glob("*.yaml"):
        text = path.read_text().replace("port: 8001", f"port: {ports['v1']}").replace("port: 8002", f"port: {ports['v2']}")
        path.write_text(text)
    return out


def _run(block: Block, tmp_path: Path, ports: dict[str, int], examples: Path, index: int) -> str:
    script = (block.text.replace("127.0.0.1:10000", f"127.0.0.1:{ports['listen']}")
              .replace(".venv/bin/sluice", f"{PYTHON} -m sluice")
              .replace("examples/", f"{examples}/"))
    out = tmp_path / f"block{index}.out"
    with out.open("wb") as sink:
        # Its own session: whatever it leaves running in the background is stopped with it, by group.
        shell = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, stdout=sink,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 env={**os.environ, "SLUICE_SERVER": f"http://127.0.0.1:{ports['admin']}"})
        try:
            code = shell.wait(timeout=180)
        finally:
            try:
                os.killpg(shell.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    text = out.read_text()
    assert code == 0, f"{block.where} exited {code}:\n{text}"
    for expected in block.expected():
        assert expected in text, f"{block.where}: expected {expected!r} in:\n{text}"
    return text


def test_the_tour_then_the_geo_example_work_in_order(tmp_path: Path, model_repository: Path) -> None:
    ports = {name: free_port() for name in ("xds", "admin", "listen", "envoy_admin", "v1", "v2", "llm")}
    examples = _examples(tmp_path, ports)
    tour = blocks(ROOT / "docs/tour.md", "sh")
    geo = [b for b in blocks(ROOT / "docs/policy/geo.md", "sh") if b.expected()]
    assert len(tour) >= 5 and len(geo) == 1
    mesh = _start_mesh(tmp_path, ports, model_repository, "up")
    try:
        wait_until(lambda: "sluice is up." in mesh.log.read_text(), 120, interval=0.2, what=lambda: f"mesh\n{mesh.tail()}")
        assert "reusing the policy" not in mesh.log.read_text()
        outputs = [_run(block, tmp_path, ports, examples, i) for i, block in enumerate([*tour, *geo])]
        assert "429" in outputs[3] and "succeeded" in outputs[4]
    finally:
        _stop_mesh(mesh)

    again = _start_mesh(tmp_path, ports, model_repository, "again")
    try:
        wait_until(lambda: "sluice is up." in again.log.read_text(), 120, interval=0.2,
                   what=lambda: f"mesh again\n{again.tail()}")
        log = again.log.read_text()
        assert f"reusing the policy stored in sqlite:///{tmp_path / 'tour.db'}" in log
        assert re.search(r"To start fresh: stop sluice \(Ctrl-C\), then `rm -f \S+tour\.db ", log), log
        assert "applied" not in log.split("reusing", 1)[0]
    finally:
        _stop_mesh(again)
