"""Engine placement per agent (default suite; mocked device lists, no vLLM or GPU)."""

from __future__ import annotations

import os

import pytest

from llm.rollout.placement import EnginePlacement, PlacementError, engine_environment, engines_per_device, place_engines


def test_agents_get_their_own_gpus():
    p = place_engines(["a", "b", "c"], [["cuda:0"], ["cuda:1"], ["cuda:2"]], "cuda", device_count=3)
    assert [x.visible for x in p] == ["0", "1", "2"]
    assert [x.devices for x in p] == [("cuda:0",), ("cuda:1",), ("cuda:2",)]
    assert engines_per_device(p) == {"cuda:0": ["a"], "cuda:1": ["b"], "cuda:2": ["c"]}


def test_auto_and_bare_cuda_mean_device_zero_and_agents_may_share_it():
    p = place_engines(["a", "b"], [["auto"], ["cuda"]], "cuda", device_count=2)
    assert [x.visible for x in p] == ["0", "0"]
    assert engines_per_device(p) == {"cuda:0": ["a", "b"]}


def test_visible_ids_follow_the_parent_list_as_in_a_ray_actor():
    """This process sees physical GPUs 4,5,6: agent device cuda:1 is physical 5."""
    p = place_engines(["a", "b"], [["cuda:1"], ["cuda:0", "cuda:2"]], "cuda", device_count=3, parent_visible="4,5,6")
    assert p[0].visible == "5" and p[0].tensor_parallel_size == 1
    assert p[1].visible == "4,6" and p[1].tensor_parallel_size == 2
    uuids = place_engines(["a"], [["cuda:1"]], "cuda", 2, parent_visible="GPU-aa, GPU-bb")
    assert uuids[0].visible == "GPU-bb"


def test_bad_devices_name_the_agent():
    with pytest.raises(PlacementError, match="agent 'b'.*cuda:3.*only 2"):
        place_engines(["a", "b"], [["cuda:0"], ["cuda:3"]], "cuda", device_count=2)
    with pytest.raises(PlacementError, match="agent 'a'.*repeat"):
        place_engines(["a"], [["cuda:0", "cuda:0"]], "cuda", device_count=2)
    with pytest.raises(PlacementError, match="agent 'a'.*'xpu:0'.*'cuda'"):
        place_engines(["a"], [["xpu:0"]], "cuda", device_count=2)
    with pytest.raises(PlacementError, match="agent 'a'.*CPU-only"):
        place_engines(["a"], [["cuda:1"]], "cpu", device_count=1)
    with pytest.raises(PlacementError, match="2 agents but 1"):
        place_engines(["a", "b"], [["cpu"]], "cpu", device_count=1)


def test_cpu_is_only_validated():
    p = place_engines(["a", "b"], [["cpu"], ["auto"]], "cpu", device_count=1)
    assert p == [EnginePlacement("a", ("cpu",), None, 1), EnginePlacement("b", ("cpu",), None, 1)]


def test_engine_environment_sets_and_restores(monkeypatch):
    monkeypatch.setenv("TEAMTR_TEST_VISIBLE", "4,5,6")
    with engine_environment(EnginePlacement("a", ("cuda:1",), "5", 1), "TEAMTR_TEST_VISIBLE"):
        assert os.environ["TEAMTR_TEST_VISIBLE"] == "5"
    assert os.environ["TEAMTR_TEST_VISIBLE"] == "4,5,6"
    monkeypatch.delenv("TEAMTR_TEST_VISIBLE")
    with pytest.raises(RuntimeError):
        with engine_environment(EnginePlacement("a", ("cuda:0",), "0", 1), "TEAMTR_TEST_VISIBLE"):
            raise RuntimeError("engine failed to start")
    assert "TEAMTR_TEST_VISIBLE" not in os.environ
    with engine_environment(EnginePlacement("a", ("cpu",), None, 1), "TEAMTR_TEST_VISIBLE"):
        assert "TEAMTR_TEST_VISIBLE" not in os.environ
