"""ray_cluster.yaml passes Ray's own offline cluster-config validation (no credentials,
no network), broken copies of it fail, and its defaults keep the dashboard private."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


def load() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def check(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_validates():
    prepared = check(load())
    assert prepared["provider"]["type"] == "aws"
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # a CPU head
    gpu = prepared["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= prepared["max_workers"]  # autoscaling to zero
    assert 1 <= prepared["idle_timeout_minutes"] <= 60


def broken_copies():
    def mutate(fn):
        config = load()
        fn(config)
        return config

    return {
        "unknown head type": mutate(lambda c: c.update(head_node_type="no_such_type")),
        "unknown key": mutate(lambda c: c.update(max_wrokers=3)),
        "min > max workers": mutate(
            lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9, max_workers=2)),
        "missing node_config": mutate(lambda c: c["available_node_types"]["gpu_worker"].pop("node_config")),
        "bad type": mutate(lambda c: c.update(idle_timeout_minutes="ten")),
        "unknown provider": mutate(lambda c: c["provider"].update(type="not_a_cloud")),
    }


@pytest.mark.parametrize("name", list(broken_copies()))
def test_broken_copies_fail(name):
    with pytest.raises((ValueError, NotImplementedError, jsonschema.ValidationError)):
        check(broken_copies()[name])


def test_broken_file_on_disk_fails(tmp_path):
    text = CLUSTER_YAML.read_text().replace("head_node_type: head_cpu", "head_node_type: head_gpu")
    (tmp_path / "cluster.yaml").write_text(text)
    with pytest.raises(ValueError):
        check(yaml.safe_load((tmp_path / "cluster.yaml").read_text()))


def test_dashboard_and_job_server_are_not_public():
    config = load()
    head_start = " ".join(config["head_start_ray_commands"])
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in commands
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "security_group" not in config["provider"] or all(
        perm["FromPort"] != 8265 for perm in config["provider"]["security_group"].get("IpPermissions", []))


def test_project_and_ray_are_pinned():
    config = load()
    setup = " ".join(config["setup_commands"])
    assert re.search(r"git checkout .*v\d+\.\d+\.\d+", setup) and 'pip install -q -e .' in setup
    for image in (config["docker"]["head_image"], config["docker"]["worker_image"]):
        assert image.split(":")[1].startswith(ray.__version__ + "-")  # Ray in the image = the pinned ray
