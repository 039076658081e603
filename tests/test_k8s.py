"""Static checks of the Kubernetes manifests (deploy/k8s/: a kustomize base, CPU and GPU
overlays).

No cluster here: every resource is validated offline against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields are errors), the GPU overlay's patches are
applied the way kustomize merges them and the result validated too, and the manifests are
held to the CLI and settings: every command is a real ``radlens`` command with real options,
every RADLENS_ variable is a real setting (or a variable the training code reads), the
probes hit /readyz and /healthz on the port ``radlens serve`` is given, the API mounts the
store read-only, and the training Job's TF_CONFIG passes ``parse_tf_config`` for every
worker index.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.test_containers import _parse_cli

K8S = REPO_ROOT / "deploy" / "k8s"
BASE = K8S / "base"
KUBERNETES_VERSION = "1.30.0"
IMAGE_UID = 10001  # the Dockerfile's `useradd --uid`
# RADLENS_ variables read outside the settings class, by the training code
TRAINING_ENV = {"RADLENS_PATIENT_HASH_KEY": REPO_ROOT / "training" / "data" / "sources.py"}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def _base_resources() -> list[dict[str, Any]]:
    return [doc for name in _kustomization(BASE)["resources"] for doc in _documents(BASE / name)]


def _merge(base: Any, patch: Any) -> Any:
    """A strategic merge as kustomize applies these patches: maps merge key by key, lists of
    maps with a ``name`` merge item by item on it (containers, env), other values replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    named = (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    )
    if named:
        merged_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            index = next((i for i, b in enumerate(merged_list) if b["name"] == item["name"]), None)
            if index is None:
                merged_list.append(item)
            else:
                merged_list[index] = _merge(merged_list[index], item)
        return merged_list
    return copy.deepcopy(patch)


def _overlay(name: str) -> list[dict[str, Any]]:
    folder = K8S / "overlays" / name
    kustomization = _kustomization(folder)
    assert kustomization["resources"] == ["../../base"]
    resources = copy.deepcopy(_base_resources())
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load((folder / entry["path"]).read_text())
        targets = [
            i
            for i, r in enumerate(resources)
            if (r["kind"], r["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
        ]
        assert len(targets) == 1, f"{entry['path']} patches nothing in the base"
        resources[targets[0]] = _merge(resources[targets[0]], patch)
    for image in kustomization.get("images", []):
        for resource in resources:
            for container in _containers(resource):
                if container["image"] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    return resources


def _pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    if resource["kind"] in ("Deployment", "Job"):
        return resource["spec"]["template"]["spec"]
    return None


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(resource)
    return spec["containers"] if spec else []


def _get(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}"
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def test_the_base_lists_every_manifest_file():
    listed = set(_kustomization(BASE)["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_resource_validates_against_the_kubernetes_schemas(overlay: str):
    import kubernetes_validate

    resources = _overlay(overlay)
    kinds = {r["kind"] for r in resources}
    expected = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"}
    assert expected | {"PersistentVolumeClaim", "ConfigMap"} <= kinds
    for resource in resources:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_a_wrong_field_is_caught_by_the_validation():
    """The validation is not vacuous: a misspelt field fails it."""
    import kubernetes_validate

    deployment = copy.deepcopy(_get(_base_resources(), "Deployment", "radlens-api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"path": "/x"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_command_is_a_real_radlens_command(overlay: str):
    commands = [c["command"] for r in _overlay(overlay) for c in _containers(r)]
    assert len(commands) == 3  # migrate, api, train
    for command in commands:
        assert command[0] == "radlens" and "args" not in command
        _parse_cli(command[1:])


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_radlens_variable_is_a_setting_or_read_by_training(overlay: str):
    from radlens.app.settings import Settings

    settings = {f"RADLENS_{name.upper()}" for name in Settings.model_fields}
    for name, source in TRAINING_ENV.items():
        assert name in source.read_text(), f"{name} is no longer read in {source}"
    used = {n for r in _overlay(overlay) for c in _containers(r) for n in _env(c)}
    radlens_vars = {n for n in used if n.startswith("RADLENS_")}
    assert "RADLENS_DATABASE_URL" in radlens_vars
    unknown = sorted(radlens_vars - settings - set(TRAINING_ENV))
    assert not unknown, f"not settings: {unknown}"


def test_secrets_come_from_secret_refs_never_literals():
    for resource in _base_resources():
        for container in _containers(resource):
            for name, item in _env(container).items():
                if re.search("DATABASE_URL|KEY|PASSWORD|SECRET|TOKEN", name):
                    assert "value" not in item, f"{name} has a literal value"
                    assert item["valueFrom"]["secretKeyRef"]["name"] == "radlens-secrets"


def test_api_probes_port_and_read_only_store():
    resources = _base_resources()
    deployment = _get(resources, "Deployment", "radlens-api")
    (api,) = _containers(deployment)
    port = int(api["command"][api["command"].index("--port") + 1])
    assert api["ports"] == [{"name": "http", "containerPort": port}]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert api[probe]["httpGet"]["port"] == "http"
    assert api["resources"]["requests"] and api["resources"]["limits"]["memory"]
    store_mount = next(m for m in api["volumeMounts"] if m["mountPath"] == "/data/store")
    assert store_mount["readOnly"] is True
    assert _env(api)["RADLENS_MODEL_STORE"]["value"] == "/data/store"
    service = _get(resources, "Service", "radlens-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        resource = _get(resources, kind, "radlens-api")
        selector = resource["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items()
    hpa = _get(resources, "HorizontalPodAutoscaler", "radlens-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "radlens-api"
    assert (
        hpa["spec"]["minReplicas"]
        > _get(resources, "PodDisruptionBudget", "radlens-api")["spec"]["minAvailable"]
    )


def test_every_pod_runs_as_the_image_user_on_a_read_only_root():
    for resource in _base_resources():
        spec = _pod_spec(resource)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == IMAGE_UID
        for container in spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert f"--uid {IMAGE_UID}" in (REPO_ROOT / "Dockerfile").read_text()


def _tf_config_for(container: dict[str, Any], index: int) -> str:
    """TF_CONFIG as the kubelet expands it: $(TASK_INDEX) is the pod's completion index."""
    env = _env(container)
    assert "job-completion-index" in env["TASK_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    return env["TF_CONFIG"]["value"].replace("$(TASK_INDEX)", str(index))


def test_training_job_gives_each_indexed_worker_its_tf_config():
    from radlens.training.distribute import parse_tf_config

    resources = _base_resources()
    job = _get(resources, "Job", "radlens-train")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]  # every worker must run at once
    (train,) = _containers(job)
    assert "multiworker" in train["command"]
    headless = _get(resources, "Service", "radlens-train-workers")
    assert headless["spec"]["clusterIP"] == "None"
    assert spec["template"]["spec"]["subdomain"] == headless["metadata"]["name"]
    port = headless["spec"]["ports"][0]["port"]
    chiefs = []
    for index in range(spec["completions"]):
        config = parse_tf_config(_tf_config_for(train, index))
        assert config.task_index == index and config.num_workers == spec["completions"]
        # the pod DNS name of an Indexed Job's pod: <job>-<index>.<subdomain>
        expected = f"{job['metadata']['name']}-{index}.{headless['metadata']['name']}:{port}"
        assert config.address == expected
        chiefs.append(config.is_chief)
    assert chiefs == [True] + [False] * (spec["completions"] - 1)  # one exporter


def test_training_job_mounts_match_its_command_and_config():
    from radlens.training.config import TrainConfig

    resources = _base_resources()
    (train,) = _containers(_get(resources, "Job", "radlens-train"))
    command = train["command"]
    mounts = {m["mountPath"]: m for m in train["volumeMounts"]}
    for option in ("--store", "--runs-dir"):
        path = command[command.index(option) + 1]
        assert path in mounts and not mounts[path].get("readOnly", False)
    config_path = Path(command[command.index("--config") + 1])
    assert str(config_path.parent) in mounts
    configmap = _get(resources, "ConfigMap", "radlens-train-config")
    config = TrainConfig.from_dict(yaml.safe_load(configmap["data"][config_path.name]))
    assert config.data is not None
    assert any(config.data.startswith(p + "/") for p, m in mounts.items() if m.get("readOnly"))


def test_gpu_overlay_asks_for_a_gpu_and_serves_on_it():
    resources = _overlay("gpu")
    (api,) = _containers(_get(resources, "Deployment", "radlens-api"))
    assert api["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _env(api)["RADLENS_DEVICE"]["value"] == "gpu"
    assert api["resources"]["requests"]["cpu"]  # the base's fields survive the patch
    (train,) = _containers(_get(resources, "Job", "radlens-train"))
    assert train["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert api["image"].endswith("-gpu") and train["image"].endswith("-gpu")
    cpu = _overlay("cpu")
    (cpu_api,) = _containers(_get(cpu, "Deployment", "radlens-api"))
    assert "nvidia.com/gpu" not in cpu_api["resources"]["limits"]
    assert _env(cpu_api)["RADLENS_DEVICE"]["value"] == "cpu"


def test_the_api_starts_with_the_secret_the_docs_say_to_create(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QA round 19: the Secret of kustomization.yaml's comment holds uid-pseudonym-key, which
    the API pods read; without RADLENS_DEDUPE_KEY beside it their settings refuse to load, so
    every pod failed at start-up. The API container's environment, with that Secret's keys
    (made-up values), must make valid settings."""
    from radlens.app.settings import Settings

    comment = (BASE / "kustomization.yaml").read_text()
    secret_keys = re.findall(r"--from-literal=([a-z-]+)=", comment)
    assert "uid-pseudonym-key" in secret_keys
    secret = {key: f"made-up-{key}-value-0123456789" for key in secret_keys}
    secret["database-url"] = "sqlite:///made-up.db"
    (api,) = _containers(_get(_base_resources(), "Deployment", "radlens-api"))
    for name in [n for n in os.environ if n.startswith("RADLENS_")]:
        monkeypatch.delenv(name)
    for name, item in _env(api).items():
        if "value" in item:
            monkeypatch.setenv(name, str(item["value"]))
        elif (ref := item["valueFrom"]["secretKeyRef"])["key"] in secret:
            monkeypatch.setenv(name, secret[ref["key"]])
        else:
            assert ref.get("optional"), f"{name} reads {ref['key']}, which the Secret lacks"
    settings = Settings()  # raised "RADLENS_UID_PSEUDONYM_KEY needs RADLENS_DEDUPE_KEY"
    assert settings.uid_pseudonym_key is not None and settings.dedupe_key is not None


def test_the_api_pins_the_model_the_training_job_makes():
    """Unpinned, a replica that starts serves the newest version in the shared store while the
    others keep theirs (QA round 44: one series stored as 6 predictions of one version and 3
    of another). The pin names the training Job's model, with a version."""
    from radlens.app.settings import Settings
    from radlens.training.config import TrainConfig

    resources = _base_resources()
    (api,) = _containers(_get(resources, "Deployment", "radlens-api"))
    pin = _env(api)["RADLENS_MODEL"]["value"]
    name, colon, version = pin.partition(":")
    assert colon and version.isdigit(), f"RADLENS_MODEL={pin!r} pins no version"
    configmap = _get(resources, "ConfigMap", "radlens-train-config")
    config = TrainConfig.from_dict(yaml.safe_load(configmap["data"]["train.yaml"]))
    assert name == config.name
    assert "model" in Settings.model_fields
