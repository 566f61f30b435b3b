"""The cluster definitions: Ray's own validation, KubeRay fields, pinned versions, security,
and the training/sweep commands they run (no cluster is started)."""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
DOCS = ROOT / "docs" / "cluster.md"
RUNTIME_ENV = ROOT / "k8s" / "runtime-env.yaml"
MANIFESTS = {name: ROOT / "k8s" / name for name in ("raycluster.yaml", "rayjob-train.yaml", "rayjob-tune.yaml")}
CLUSTER_FILES = [CLUSTER_YAML, DOCS, RUNTIME_ENV, *MANIFESTS.values()]

IMAGE = re.compile(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<py_minor>\d+)-cu(?P<cuda>\d+)")
TORCH_INDEX = re.compile(r"https://download\.pytorch\.org/whl/cu(?P<cuda>\d+)")


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def manifest(name: str) -> dict:
    (doc,) = yaml.safe_load_all(MANIFESTS[name].read_text())
    return doc


def cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned_ray_version() -> str:
    (ray_req,) = [r for r in map(Requirement, pyproject()["project"]["dependencies"]) if r.name == "ray"]
    (spec,) = ray_req.specifier
    assert spec.operator == "==", "pyproject.toml must pin Ray exactly"
    return spec.version


def image_tags() -> list[str]:
    """Every Ray image named by cluster.yaml, the KubeRay manifests and the docs."""
    return [m.group(0) for path in (CLUSTER_YAML, DOCS, *MANIFESTS.values()) for m in IMAGE.finditer(path.read_text())]


def runtime_envs() -> dict[str, dict]:
    envs = {"k8s/runtime-env.yaml": load_yaml(RUNTIME_ENV)}
    for name in ("rayjob-train.yaml", "rayjob-tune.yaml"):
        envs[name] = yaml.safe_load(manifest(name)["spec"]["runtimeEnvYAML"])
    return envs


def entrypoints() -> list[str]:
    """The training and sweep commands the RayJobs and docs/cluster.md run on a cluster."""
    commands = [manifest(name)["spec"]["entrypoint"] for name in ("rayjob-train.yaml", "rayjob-tune.yaml")]
    docs = DOCS.read_text().replace("\\\n", " ")
    commands += [m.group(1) for m in re.finditer(r"ray job submit .*? -- (python pipelines/.*)", docs)]
    return list(dict.fromkeys(commands))


# -- cluster.yaml ----------------------------------------------------------------------------


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(load_yaml(CLUSTER_YAML))))


def test_cluster_head_runs_no_training():
    cfg = load_yaml(CLUSTER_YAML)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    assert head["resources"].get("GPU", 0) == 0


def test_cluster_has_8_and_1_gpu_worker_types_on_spot_and_on_demand():
    cfg = load_yaml(CLUSTER_YAML)
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    shapes = {
        (t["resources"]["GPU"], t["node_config"].get("InstanceMarketOptions", {}).get("MarketType", "on-demand"))
        for t in workers.values()
    }
    assert shapes >= {(8, "spot"), (8, "on-demand"), (1, "spot"), (1, "on-demand")}
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
    assert sum(t["max_workers"] for t in workers.values()) <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0


def test_cluster_turns_token_auth_on_and_keeps_dashboard_on_loopback():
    cfg = load_yaml(CLUSTER_YAML)
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    (head_start,) = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def test_cluster_setup_installs_cuda_torch_and_the_project():
    cfg = load_yaml(CLUSTER_YAML)
    setup = "\n".join(cfg["setup_commands"])
    torch_pin = next(r for r in pyproject()["project"]["dependencies"] if r.startswith("torch=="))
    assert f"pip install {torch_pin} --index-url https://download.pytorch.org/whl/cu" in setup
    assert TORCH_INDEX.search(setup)["cuda"] == IMAGE.search(cfg["docker"]["image"])["cuda"]
    project_dir = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    assert f'pip install -e "{project_dir}[' in setup


# -- KubeRay manifests -----------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_has_the_required_kuberay_fields(name):
    doc = manifest(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == ("RayCluster" if name == "raycluster.yaml" else "RayJob")
    assert doc["metadata"]["name"]
    spec = cluster_spec(doc)
    assert spec["rayVersion"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, group["groupName"]
    if doc["kind"] == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("python pipelines/")
        assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_raycluster_has_an_8_gpu_and_a_1_gpu_group():
    groups = cluster_spec(manifest("raycluster.yaml"))["workerGroupSpecs"]
    gpus = {int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for g in groups}
    assert gpus == {8, 1}


@pytest.mark.parametrize("name", list(runtime_envs()))
def test_job_runtime_env_is_valid_and_installs_the_pinned_dependencies(name):
    from ray.runtime_env import RuntimeEnv

    env = runtime_envs()[name]
    RuntimeEnv(**env)  # Ray's own validation of every field
    project = pyproject()["project"]
    # Ray comes with the image; everything else the project needs, extras included.
    wanted = [r for r in project["dependencies"] if Requirement(r).name != "ray"]
    wanted += [r for extra in ("lora", "optuna") for r in project["optional-dependencies"][extra]]
    assert sorted(env["pip"]["packages"]) == sorted(wanted)
    index = " ".join(env["pip"]["pip_install_options"])
    assert TORCH_INDEX.search(index)["cuda"] == IMAGE.search(image_tags()[0])["cuda"]


# -- Versions, security, entrypoints ---------------------------------------------------------


def test_ray_versions_agree_across_pyproject_installed_ray_images_manifests_and_docs():
    pinned = pinned_ray_version()
    assert ray.__version__ == pinned
    for path in (CLUSTER_YAML, DOCS, *MANIFESTS.values()):
        assert IMAGE.search(path.read_text()), f"{path.name} names no rayproject/ray image"
    assert len(set(image_tags())) == 1, "one image on every node and in every manifest"
    assert IMAGE.match(image_tags()[0])["ray"] == pinned
    assert {cluster_spec(manifest(name))["rayVersion"] for name in MANIFESTS} == {pinned}
    docs_versions = set(re.findall(r"\bRay (\d+\.\d+\.\d+)", DOCS.read_text()))
    assert docs_versions == {pinned}


def test_image_python_satisfies_requires_python():
    lowest = re.fullmatch(r">=\s*3\.(\d+)", pyproject()["project"]["requires-python"])
    for tag in image_tags():
        m = IMAGE.match(tag)
        assert m["py"] == "3" and int(m["py_minor"]) >= int(lowest[1]), tag


SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"(?i)aws_secret_access_key\s*[:=]",
    r"(?i)aws_session_token\s*[:=]",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)wandb_api_key\s*[:=]\s*['\"]?[0-9a-f]{20,}",
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    r"(?i)\b(password|passwd|secret_key|api_key)\s*[:=]\s*['\"]?\w{8,}",
]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_no_secret_in_cluster_files(path):
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), f"{path.name} matches {pattern}"


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_secrets_come_from_kubernetes_secrets(name):
    for container in containers(cluster_spec(manifest(name))):
        for var in container.get("env", []):
            if re.search(r"KEY|TOKEN|SECRET|PASSWORD", var["name"]):
                assert "value" not in var and "secretKeyRef" in var["valueFrom"], var["name"]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_dashboard_is_not_exposed_publicly(path):
    text = path.read_text()
    assert "0.0.0.0" not in text
    assert not re.search(r"(?i)serviceType:\s*(LoadBalancer|NodePort)", text)
    assert not re.search(r"(?i)kind:\s*(Ingress|Service)\b", text)


@pytest.mark.parametrize("name", MANIFESTS)
def test_head_service_is_cluster_internal(name):
    assert cluster_spec(manifest(name))["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"


def test_docs_and_manifests_name_both_entrypoints():
    scripts = {shlex.split(command)[1] for command in entrypoints()}
    assert scripts == {"pipelines/train.py", "pipelines/tune.py"}


@pytest.mark.timeout(360)
@pytest.mark.parametrize("command", entrypoints())
def test_entrypoint_accepts_its_arguments(command):
    """Run the command the cluster would run, with --dry-run: it resolves its config locally."""
    argv = shlex.split(command)
    assert argv[0] == "python"
    # A Ray job's working directory is on its PYTHONPATH; mirror that here.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, *argv[1:], "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{command} --dry-run failed:\n{proc.stdout}\n{proc.stderr}"
