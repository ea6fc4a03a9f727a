"""infra/ templates are valid: YAML parses, Kubernetes manifests have the kinds and fields KubeRay
expects, the ``ray up`` config has the keys the autoscaler requires, the Dockerfile installs tokenmill,
and ``pipeline submit`` builds the job it documents (pure: no cluster)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import TokenmillError
from pipeline.submit import build_job

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _load(rel: str) -> dict:
    docs = list(yaml.safe_load_all((INFRA / rel).read_text()))
    assert len(docs) == 1 and isinstance(docs[0], dict)
    return docs[0]


def _check_pod_template(template: dict, container_name: str) -> None:
    (container,) = template["spec"]["containers"]
    assert container["name"] == container_name
    assert container["image"]
    assert container["resources"]["limits"]["cpu"]
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert mounts <= {v["name"] for v in template["spec"]["volumes"]}


def _check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    _check_pod_template(head["template"], "ray-head")
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265} <= ports
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        _check_pod_template(group["template"], "ray-worker")


def test_raycluster_manifest():
    doc = _load("k8s/raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    assert doc["metadata"]["name"]
    _check_cluster_spec(doc["spec"])


def test_rayjob_manifest():
    doc = _load("k8s/rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    cmd = shlex.split(spec["entrypoint"])
    assert cmd[:4] == ["python", "-m", "pipeline", "run"]
    assert cmd[4].endswith("quickstart.yaml")
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode"}
    _check_cluster_spec(spec["rayClusterSpec"])


def test_pvc_manifest_is_shared():
    doc = _load("k8s/pvc.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "PersistentVolumeClaim")
    assert doc["spec"]["accessModes"] == ["ReadWriteMany"]
    claim = doc["metadata"]["name"]
    for rel in ("k8s/raycluster.yaml", "k8s/rayjob.yaml"):
        assert f"claimName: {claim}" in (INFRA / rel).read_text()


def test_ray_up_config():
    doc = _load("ray-up/aws.yaml")
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types",
                "head_node_type", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in doc, key
    assert doc["head_node_type"] in doc["available_node_types"]
    assert doc["provider"]["type"] == "aws"
    for node in doc["available_node_types"].values():
        assert "node_config" in node and "resources" in node
    assert any("ray start --head" in c for c in doc["head_start_ray_commands"])
    assert any("ray start --address" in c for c in doc["worker_start_ray_commands"])


def test_dockerfile_installs_tokenmill():
    text = (INFRA / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0].startswith("FROM rayproject/ray:")
    assert any(ln.startswith("COPY") and "pipeline" in ln for ln in lines)
    assert any(ln.startswith("COPY") and "stages" in ln for ln in lines)
    assert "pip install" in text and "import pipeline, stages" in text


def test_readme_has_the_commands():
    text = (INFRA / "README.md").read_text()
    for cmd in ("docker build", "kubectl apply -f infra/k8s/raycluster.yaml", "kubectl apply -f infra/k8s/rayjob.yaml",
                "ray up infra/ray-up/aws.yaml", "ray down infra/ray-up/aws.yaml", "pipeline submit",
                "kubectl delete"):
        assert cmd in text, cmd


def _args(spec: Path, **kw) -> argparse.Namespace:
    base = dict(spec=str(spec), address=None, output=None, force=[], pip=[], python=sys.executable,
                no_working_dir=False, env=[], no_wait=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_build_job_carries_spec_and_options(tmp_path):
    spec = tmp_path / "my.yaml"
    spec.write_text("name: x\n")
    job = build_job(_args(spec, pip=["tokenmill"], env=["A=1"], force=["dedup"], output="/shared/out"))
    assert job["runtime_env"]["working_dir"] == str(tmp_path)
    assert job["runtime_env"]["pip"] == ["tokenmill"]
    assert job["runtime_env"]["env_vars"]["A"] == "1"
    cmd = shlex.split(job["entrypoint"])
    assert cmd[:5] == [sys.executable, "-m", "pipeline", "run", "my.yaml"]
    assert cmd[cmd.index("--output") + 1] == "/shared/out"
    assert cmd[cmd.index("--force") + 1] == "dedup"
    assert job["submission_id"].startswith("tokenmill-my-")
    job2 = build_job(_args(spec, no_working_dir=True))
    assert "working_dir" not in job2["runtime_env"] and "pip" not in job2["runtime_env"]
    assert shlex.split(job2["entrypoint"])[4] == str(spec.resolve())


def test_build_job_user_errors(tmp_path):
    with pytest.raises(TokenmillError, match="spec not found"):
        build_job(_args(tmp_path / "nope.yaml"))
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\n")
    with pytest.raises(TokenmillError, match="KEY=VALUE"):
        build_job(_args(spec, env=["novalue"]))
