"""The KubeRay example: Kubernetes' own schemas, the worker's startup script run for real, and the manifests agreeing
with the specs, the image and each other.

The startup script is run with bash exactly as the pod runs it, with a stand-in `ray` that records the command it
was given: when `reconciler node-resources` fails (here the real command, on a machine without NVML) the pod must
exit non-zero before `ray start`; when it succeeds, `ray start` gets KubeRay's command plus the placement arguments.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from reconciler.cli import build_parser
from reconciler.spec import load_specs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kuberay"
# What KubeRay 1.6 generates for this group (its env var KUBERAY_GEN_RAY_START_CMD), GPUs taken from the limits.
GENERATED = ("ray start --address=homelab-head-svc.default.svc.cluster.local:6379 --block "
             "--dashboard-agent-listen-port=52365 --metrics-export-port=8080 --num-cpus=8 --num-gpus=2")


def documents(name: str) -> list[dict]:
    return [d for d in YAML(typ="safe").load_all((EXAMPLE / name).read_text()) if d]


def raycluster() -> dict:
    (cluster,) = documents("raycluster.yaml")
    return cluster


def worker_group() -> dict:
    (group,) = raycluster()["spec"]["workerGroupSpecs"]
    return group


def controller() -> tuple[dict, dict]:
    config, deployment = documents("controller.yaml")
    return config, deployment


def inventory() -> dict[str, int]:
    desired = load_specs(EXAMPLE / "specs").desired
    assert desired is not None
    return {node.node: len(node.gpus) for pool in desired.pools for node in pool.inventory}


# -- Kubernetes' schemas ---------------------------------------------------------------------------------------------

def validate(resource: dict) -> None:
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def test_the_controller_manifests_are_valid_kubernetes_objects():
    for resource in controller():
        validate(resource)


@pytest.mark.parametrize("group", ["head", "gpu"])
def test_every_pod_template_is_a_valid_pod_template(group):
    spec = raycluster()["spec"]
    template = spec["headGroupSpec"]["template"] if group == "head" else worker_group()["template"]
    validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"homelab-{group}"},
              "template": template})


def test_a_pod_template_mistake_is_caught():  # the check above can fail
    template = worker_group()["template"]
    template["spec"]["tolerations"][0]["effect"] = "NoSchedul"
    template["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template})


# -- the worker's startup script, run --------------------------------------------------------------------------------

def startup_script() -> str:
    (container,) = worker_group()["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/bash", "-c", "--"]
    (script,) = container["args"]
    return script


def run_startup(tmp_path: Path, reconciler: str | None) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The pod's command, with `ray` recording its arguments; ``reconciler``: a stand-in script, or None for the
    real command of this environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started = tmp_path / "ray-start-args"
    (bin_dir / "ray").write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(started))}\n')
    if reconciler is not None:
        (bin_dir / "reconciler").write_text("#!/usr/bin/env bash\n" + reconciler)
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    path = [str(bin_dir)] + ([] if reconciler is not None else [str(Path(sys.executable).parent)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"PATH": os.pathsep.join([*path, "/usr/bin", "/bin"]), "K8S_NODE_NAME": "gpu-node-1",
                "KUBERAY_GEN_RAY_START_CMD": GENERATED, "NO_COLOR": "1"})
    result = subprocess.run(["/bin/bash", "-c", "--", startup_script()], env=env, capture_output=True, text=True,
                            timeout=120)
    return result, started


def test_the_pod_fails_before_ray_start_when_node_resources_fails(tmp_path):
    result, started = run_startup(tmp_path, reconciler=None)  # the real command: no NVML on this machine
    assert result.returncode != 0
    assert "NVML" in result.stderr, result.stderr  # the pod's log says why
    assert not started.exists(), "ray start ran without the per-GPU resources"


def test_a_failure_after_partial_output_also_stops_the_pod(tmp_path):
    result, started = run_startup(tmp_path, 'echo "--num-gpus=2"\necho "error: NVML: driver gone" >&2\nexit 1\n')
    assert result.returncode == 1 and not started.exists()


def test_ray_start_gets_kuberays_command_and_the_placement_of_this_node(tmp_path):
    placement = ('--num-gpus=2 --resources={"vram_mb_gpu-node-1_gpu0":23552,"vram_mb_gpu-node-1_gpu1":23552} '
                 '--labels=pool=homelab,reconciler.io/node=gpu-node-1')
    # The stand-in checks it was asked for this node, the pool label and the reserve, as the real one would use them.
    fake = ('[ "$*" = "node-resources --node gpu-node-1 --label pool=homelab --reserve 1Gi" ] '
            '|| { echo "unexpected: $*" >&2; exit 2; }\n'
            f"echo {shlex.quote(placement)}\n")
    result, started = run_startup(tmp_path, fake)
    assert result.returncode == 0, result.stderr
    assert started.read_text().split() == GENERATED.split()[1:] + placement.split()  # argv after "ray"


# -- the manifests agree with the specs, the image and each other ----------------------------------------------------

def test_one_gpu_worker_per_inventory_machine_and_only_there():
    nodes = inventory()
    group = worker_group()
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == len(nodes)
    spec = group["template"]["spec"]
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expression,) = term["matchExpressions"]
    assert expression["key"] == "kubernetes.io/hostname" and expression["operator"] == "In"
    assert sorted(expression["values"]) == sorted(nodes)
    (anti,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    # KubeRay labels each pod with its cluster and group: the rule keeps this group's pods apart.
    assert anti["labelSelector"]["matchLabels"] == {"ray.io/cluster": raycluster()["metadata"]["name"],
                                                    "ray.io/group": group["groupName"]}
    (container,) = spec["containers"]
    # The pod takes every GPU of its machine.
    assert {int(container["resources"][k]["nvidia.com/gpu"]) for k in ("requests", "limits")} == set(nodes.values())


def test_gpu_workers_tolerate_the_gpu_taint_and_have_shared_memory():
    spec = worker_group()["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    (container,) = spec["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (volume,) = [v for v in spec["volumes"] if v["name"] == mounts["/dev/shm"]]
    assert volume["emptyDir"]["medium"] == "Memory"


def test_the_head_runs_no_replica():
    assert raycluster()["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert raycluster()["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_the_startup_script_labels_the_node_for_the_pools_selector():
    desired = load_specs(EXAMPLE / "specs").desired
    (pool,) = desired.pools
    for key, value in dict(pool.selector or ()).items():
        assert f"--label {key}={value}" in startup_script()


def test_one_pinned_image_built_from_the_ray_image_of_the_clusters_version():
    cluster = raycluster()
    spec = cluster["spec"]
    images = {c["image"] for t in (spec["headGroupSpec"]["template"], worker_group()["template"],
                                   controller()[1]["spec"]["template"]) for c in t["spec"]["containers"]}
    (image,) = images
    assert not image.endswith(":latest") and ":" in image.rsplit("/", 1)[-1]
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    (base,) = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert base.startswith(f"rayproject/ray:{cluster['spec']['rayVersion']}-")
    assert f"ray{cluster['spec']['rayVersion']}" in image
    import tomllib

    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    version = next(line.split("=", 1)[1] for line in dockerfile.splitlines()
                   if line.startswith("ARG RECONCILER_VERSION="))
    assert f'"{name}[gpu]==${{RECONCILER_VERSION}}"' in dockerfile
    assert image.rsplit(":", 1)[1].startswith(f"{version}-")


def test_the_token_secret_is_shared_by_kuberay_and_the_controller():
    auth = raycluster()["spec"]["authOptions"]
    assert auth["mode"] == "token"
    (container,) = controller()[1]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    # KubeRay >= 1.6 reads the token from this key of the named Secret.
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": auth["secretName"], "key": "auth_token"}
    assert env["RAY_AUTH_MODE"]["value"] == "token"


def test_the_controller_watches_the_head_service_with_probes_and_scraped_metrics():
    config, deployment = controller()
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    variables = {e["name"]: config["data"][e["valueFrom"]["configMapKeyRef"]["key"]]
                 for e in container["env"] if "configMapKeyRef" in e.get("valueFrom", {})}
    argv = list(container["args"])
    for name, value in variables.items():  # Kubernetes expands $(VAR) in args
        argv = [a.replace(f"$({name})", value) for a in argv]
    assert container["command"] == ["reconciler"]
    args = build_parser().parse_args(argv)
    assert args.handler.__module__ == "reconciler.cli.watch"
    assert args.git == config["data"]["url"] and args.path == config["data"]["path"]
    assert args.address == f"{raycluster()['metadata']['name']}-head-svc:6379"
    assert args.yes and args.wait_for_lock and args.metrics_host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert ports[container[probe]["httpGet"]["port"]] == args.metrics_port
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == args.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"
