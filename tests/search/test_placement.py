"""How many measurement slots a cluster offers a profile, and what the driver says when none.

Pure logic over the node table Ray reports (``ray.nodes()``); the multi-node tests in
test_cluster.py run the same functions against real Ray nodes.
"""

from __future__ import annotations

import pytest

from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import get_profile
from tightfit.search._ray import check_feasible, measurement_slots


def node(alive: bool = True, labels: dict | None = None, **resources: float) -> dict:
    return {"Alive": alive, "Labels": labels or {}, "Resources": {"CPU": 2.0, **resources}}


def profile(**update):
    return get_profile("cpu-ort").model_copy(update=update)


def test_slots_count_devices_on_alive_nodes_with_the_labels() -> None:
    p = profile(ray_resources={"lat:t4": 1.0}, ray_labels={"hw": "t4"})
    nodes = [
        node(labels={"hw": "t4"}, **{"lat:t4": 2.0}),  # two devices
        node(labels={"hw": "t4"}, **{"lat:t4": 1.0}),
        node(alive=False, labels={"hw": "t4"}, **{"lat:t4": 1.0}),  # dead
        node(labels={"hw": "a10"}, **{"lat:t4": 1.0}),  # wrong label
        node(labels={"hw": "t4"}),  # the label but no slot
    ]
    assert measurement_slots(p, nodes) == 3
    assert check_feasible(p, nodes) == 3


def test_gpu_profiles_count_gpus_and_local_profiles_have_one_slot() -> None:
    gpu = profile(num_gpus=1.0)
    assert measurement_slots(gpu, [node(GPU=4.0), node()]) == 4
    assert measurement_slots(profile(), []) == 1  # measures on the driver's machine
    labels_only = profile(ray_labels={"hw": "t4"})  # nothing keeps two off one node: serial
    assert measurement_slots(labels_only, [node(labels={"hw": "t4"})] * 3) == 1


def test_infeasible_profiles_name_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"no Ray node offers \{'lat:x': 1.0\}.*--resources"):
        check_feasible(profile(ray_resources={"lat:x": 1.0}), [node()])
    with pytest.raises(ConfigError, match=r"labels \{hw=t4\}.*ray start --labels=hw=t4"):
        check_feasible(profile(ray_labels={"hw": "t4"}), [node(labels={"hw": "a10"})])
    with pytest.raises(ConfigError, match="no Ray node has one"):
        check_feasible(profile(num_gpus=1.0), [node()])


def test_profile_resources_must_be_positive() -> None:
    from tightfit.hardware_profiles._profile import HardwareProfile

    data = get_profile("cpu-ort").model_dump()
    with pytest.raises(ValueError, match="must be > 0"):
        HardwareProfile.model_validate({**data, "ray_resources": {"lat:x": 0}})
