from __future__ import annotations

import pytest

import dagserve
from dagserve import Autoscaling, NodeOptions, OptionsError
from dagserve._options import DEFAULT_MAX_ONGOING_REQUESTS, make_options


def test_defaults_are_explicit() -> None:
    o = NodeOptions()
    assert o.num_replicas == 1
    assert o.num_cpus == 0
    assert o.num_gpus == 0
    assert o.batch_wait_timeout_s == 0.01
    assert o.effective_max_ongoing_requests == DEFAULT_MAX_ONGOING_REQUESTS == 100
    assert o.in_force() == {}


def test_unknown_option_names_the_bad_one_and_the_valid_ones() -> None:
    with pytest.raises(OptionsError, match=r"Unknown option 'num_replicsa' for node 'f'\. Did you mean 'num_replicas'\? Valid options: .*autoscaling.*timeout_s"):

        @dagserve.node(num_replicsa=2)
        def f(x: int) -> int:
            return x


def test_unknown_option_without_close_match_still_lists_valid_ones() -> None:
    with pytest.raises(OptionsError, match=r"Unknown option 'zzz'.*Valid options: autoscaling, batch_wait_timeout_s"):
        make_options("g", zzz=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_replicas": 0}, r"Invalid option num_replicas=0 for node 'n'"),
        ({"num_replicas": "many"}, r"Invalid option num_replicas.*'many'"),
        ({"num_gpus": -0.5}, r"Invalid option num_gpus=-0\.5"),
        ({"num_gpus": 1.5}, r"num_gpus above 1 must be a whole number"),
        ({"max_batch_size": 0}, r"Invalid option max_batch_size=0"),
        ({"timeout_s": 0}, r"Invalid option timeout_s=0"),
        ({"name": "has space"}, r"Invalid option name='has space'"),
        ({"autoscaling": {"min_replicas": 3, "max_replicas": 2}}, r"min_replicas \(3\) is larger than max_replicas \(2\)"),
        ({"autoscaling": {"max_replicas": 2, "bogus": 1}}, r"autoscaling\.bogus"),
        ({"inline": True, "num_gpus": 0.5}, r"inline node runs inside the ingress process and cannot set num_gpus"),
        ({"inline": True, "num_replicas": 3}, r"cannot set num_replicas"),
    ],
)
def test_invalid_values_name_field_value_and_node(kwargs: dict, match: str) -> None:
    with pytest.raises(OptionsError, match=match):
        make_options("n", **kwargs)


def test_replicas_and_autoscaling_are_exclusive() -> None:
    with pytest.raises(OptionsError, match=r"sets both num_replicas=2 and autoscaling; choose one"):
        make_options("n", num_replicas=2, autoscaling={"max_replicas": 3})


def test_overrides_replace_replicas_with_autoscaling_and_back() -> None:
    base = make_options("n", num_replicas=3)
    auto = make_options("n", base, autoscaling={"min_replicas": 1, "max_replicas": 5})
    assert auto.autoscaling == Autoscaling(min_replicas=1, max_replicas=5)
    assert auto.replica_range() == (1, 5)
    fixed = make_options("n", auto, num_replicas=2)
    assert fixed.autoscaling is None and fixed.replica_range() == (2, 2)


def test_fractional_gpu_and_batching_floor() -> None:
    o = make_options("n", num_gpus=0.25, max_batch_size=128)
    assert o.num_gpus == 0.25
    assert o.effective_max_ongoing_requests == 256
    assert make_options("n", max_ongoing_requests=7, max_batch_size=128).effective_max_ongoing_requests == 7


def test_initial_replicas() -> None:
    assert make_options("n", num_replicas=3).initial_replicas() == 3
    assert make_options("n", num_replicas="auto").initial_replicas() == 1
    assert make_options("n", autoscaling={"min_replicas": 0, "max_replicas": 4}).initial_replicas() == 1
    assert make_options("n", autoscaling={"min_replicas": 2, "max_replicas": 4, "initial_replicas": 3}).initial_replicas() == 3
    with pytest.raises(OptionsError, match="initial_replicas must lie between"):
        make_options("n", autoscaling={"min_replicas": 2, "max_replicas": 4, "initial_replicas": 9})


def test_options_are_frozen() -> None:
    o = NodeOptions()
    with pytest.raises(Exception, match="frozen"):
        o.num_replicas = 3  # type: ignore[misc]


def test_autoscaling_takes_every_field_of_serves_autoscaling_config() -> None:
    # A config copied from Ray Serve works unchanged (issue 18); unknown names stay errors.
    serve_config = {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 5,
        "target_ongoing_requests": 3,
        "metrics_interval_s": 5.0,
        "look_back_period_s": 20.0,
        "smoothing_factor": 1.0,
        "upscale_smoothing_factor": 1.2,
        "downscale_smoothing_factor": 0.8,
        "upscaling_factor": 1.5,
        "downscaling_factor": 0.5,
        "downscale_delay_s": 300.0,
        "downscale_to_zero_delay_s": 900.0,
        "upscale_delay_s": 10.0,
        "aggregation_function": "max",
        "policy": {"policy_function": "ray.serve.autoscaling_policy:default_autoscaling_policy", "policy_kwargs": {}},
    }
    opts = dagserve.node(autoscaling=serve_config)(lambda x: x).node_options
    assert opts.autoscaling is not None
    assert opts.autoscaling.model_dump(exclude_none=True) == {**serve_config, "target_ongoing_requests": 3.0}
    with pytest.raises(OptionsError, match=r"Invalid option autoscaling.look_back_period_s=0 .*greater than 0"):
        dagserve.node(autoscaling={"look_back_period_s": 0})(lambda x: x)
    with pytest.raises(OptionsError, match=r"Invalid option autoscaling.aggregation_function='median'"):
        dagserve.node(autoscaling={"aggregation_function": "median"})(lambda x: x)
    with pytest.raises(OptionsError, match=r"autoscaling.max_replica"):
        dagserve.node(autoscaling={"max_replica": 3})(lambda x: x)
