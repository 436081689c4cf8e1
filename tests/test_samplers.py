"""Every A1111 sampler name runs; schedules and v-prediction configs reach the diffusers scheduler."""

from __future__ import annotations

import numpy as np
import pytest
from manager_fixtures import make_manager

from pipelines.errors import InvalidRequest
from pipelines.infotext import parse_infotext
from pipelines.request import GenerationRequest
from pipelines.samplers import SAMPLER_NAMES, make_scheduler, resolve_sampler
from pipelines.tiny import SD15_SCHEDULER_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

REQUIRED = ("Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE Karras",
            "DPM++ 2M SDE Karras", "DDIM", "PLMS", "UniPC", "LCM")


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    mgr = make_manager(tmp_path_factory.mktemp("samplers"))
    yield mgr
    mgr.close()


def test_the_issue_list_is_offered():
    assert set(REQUIRED) <= set(SAMPLER_NAMES)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs_two_steps_and_is_recorded(manager, sampler):
    steps = []
    result = manager.run(
        GenerationRequest.create(prompt="a bowl of fruit", sampler=sampler, steps=2, width=64, height=64, seed=9),
        on_progress=lambda e: steps.append(e.step) if e.state == "running" else None,
    )
    image = np.asarray(result.images[0])
    assert image.shape == (64, 64, 3) and image.std() > 0
    assert parse_infotext(result.infotexts[0])["Sampler"] == sampler
    assert steps and max(steps) >= 2


def test_sde_sampler_reproduces_with_the_same_seed(manager):
    def run(seed):
        req = GenerationRequest.create(prompt="x", sampler="DPM++ SDE Karras", steps=3, width=64, height=64, seed=seed)
        return np.asarray(manager.run(req).images[0], dtype=np.int16)

    first = run(5)
    assert np.array_equal(first, run(5))
    assert np.abs(first - run(6)).mean() > 0.5


def test_split_schedule_names_map_to_the_combined_label():
    assert resolve_sampler("DPM++ 2M", "Karras") == ("DPM++ 2M Karras", "Automatic")
    assert resolve_sampler("k_euler_a") == ("Euler a", "Automatic")
    assert resolve_sampler("euler", "exponential") == ("Euler", "Exponential")


def test_schedule_type_is_applied_and_written(manager):
    result = manager.run(GenerationRequest.create(prompt="x", sampler="Euler", scheduler="Exponential", steps=2,
                                                  width=64, height=64, seed=1))
    assert parse_infotext(result.infotexts[0])["Schedule type"] == "Exponential"
    scheduler = make_scheduler("Euler", "Exponential", SD15_SCHEDULER_CONFIG)
    assert scheduler.config.use_exponential_sigmas and not scheduler.config.use_karras_sigmas


def test_samplers_differ_from_each_other(manager):
    def run(sampler):
        req = GenerationRequest.create(prompt="x", sampler=sampler, steps=2, width=64, height=64, seed=4)
        return np.asarray(manager.run(req).images[0], dtype=np.int16)

    assert np.abs(run("Euler a") - run("DDIM")).mean() > 0.5


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_v_prediction_and_fresh_overrides_reach_every_scheduler(sampler):
    pristine = dict(SD15_SCHEDULER_CONFIG, prediction_type="v_prediction")
    first = make_scheduler(sampler, "Automatic", pristine)
    again = make_scheduler(sampler, "Automatic", pristine)
    assert first is not again  # one scheduler per request: they keep state
    if "prediction_type" in first.config:
        assert first.config.prediction_type == "v_prediction"
    assert pristine == dict(SD15_SCHEDULER_CONFIG, prediction_type="v_prediction")  # not modified


def test_unknown_sampler_is_refused_with_the_allowed_names():
    with pytest.raises(InvalidRequest) as info:
        GenerationRequest.create(prompt="x", sampler="Euler b")
    assert "Euler a" in str(info.value) and info.value.field == "sampler_name"
