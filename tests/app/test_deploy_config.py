"""Config files (dagserve/deploy_config.py): shape, node options over code, errors with suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest

import dagserve
from dagserve.deploy_config import compile_with_config, format_size, graph_overrides, load_config, parse_size
from dagserve.http.settings import ServerConfig, server_config
from examples.quickstart import graph as reviews

FILE = """\
graphs:
  reviews:                  # a graph's name
    nodes:
      Sentiment:            # a node's name
        num_replicas: 3
      Toxicity:
        max_batch_size: 4
        memory: 1GiB
server:
  max_body_size: 1MiB
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "dagserve.yaml"
    path.write_text(FILE)
    return path


def test_a_file_overrides_node_options_set_in_code(config_file: Path) -> None:
    plan = compile_with_config(reviews, config_file)
    assert plan.deployment("Sentiment").options.num_replicas == 3  # 2 in code
    toxicity = plan.deployment("Toxicity").options
    assert toxicity.max_batch_size == 4  # 16 in code
    assert toxicity.batch_wait_timeout_s == 0.005  # from code: the file does not set it
    assert toxicity.memory == 1024**3  # sizes are parsed
    assert plan.deployment("clean").options == dagserve.compile(reviews).deployment("clean").options
    # The user's graph is left as it was.
    assert dagserve.compile(reviews).deployment("Sentiment").options.num_replicas == 2


def test_deploy_takes_a_path_or_a_dict(config_file: Path) -> None:
    with dagserve.deploy(reviews, backend="local", config=config_file) as app:
        assert app.status().nodes["Sentiment"].running_replicas == 3
        assert app.call({"text": "What a GREAT film", "lang": "en"})["label"] == "positive"
    as_dict = {"graphs": {"reviews": {"nodes": {"Sentiment": {"num_replicas": 2, "retries": 1}}}}}
    with dagserve.deploy(reviews, backend="local", config=as_dict) as app:
        assert app.plan.deployment("Sentiment").options.retries == 1


def test_the_server_section_is_validated_and_parsed(config_file: Path) -> None:
    server = server_config(load_config(config_file))
    assert server.given() == {"max_body_size": 1024**2}
    assert ServerConfig(allowed_hosts=["api.example.com"]).given() == {"allowed_hosts": ("api.example.com",)}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"graph": {}}, "unknown section 'graph'. Did you mean 'graphs'?"),
        ({"graphs": {"review": {}}}, "names graph 'review', which is not deployed here. Did you mean 'reviews'?"),
        ({"graphs": {"reviews": {"node": {}}}}, "graphs.reviews: unknown key 'node'. Did you mean 'nodes'?"),
        (
            {"graphs": {"reviews": {"nodes": {"Sentimnt": {"num_replicas": 2}}}}},
            "has no node 'Sentimnt'. Did you mean 'Sentiment'?",
        ),
        (
            {"graphs": {"reviews": {"nodes": {"Sentiment": {"num_replica": 2}}}}},
            "Unknown option 'num_replica' for node 'Sentiment'. Did you mean 'num_replicas'?",
        ),
        (
            {"graphs": {"reviews": {"nodes": {"Sentiment": {"num_replicas": 0}}}}},
            "Invalid option num_replicas=0 for node 'Sentiment'",
        ),
        ({"graphs": {"reviews": {"nodes": {"Sentiment": {"name": "x"}}}}}, "a node's name is set in code"),
        ({"graphs": {"reviews": {"nodes": {"Toxicity": {"memory": "lots"}}}}}, "'lots' is not a size"),
        ({"graphs": {"reviews": {"nodes": {"Sentiment": 3}}}}, "graphs.reviews.nodes.Sentiment must map option names"),
    ],
)
def test_unknown_or_invalid_names_are_errors_with_the_closest_name(config: dict[str, object], message: str) -> None:
    with pytest.raises(dagserve.OptionsError, match="config") as info:
        compile_with_config(reviews, config)
    assert message in str(info.value)


def test_compile_checks_run_on_options_from_a_file() -> None:
    # Sentiment takes one text: batching it would hand it a list, so compile refuses, naming the file's part.
    with pytest.raises(dagserve.CompileError, match=r"config: graphs.reviews: Node 'Sentiment' is batched"):
        compile_with_config(reviews, {"graphs": {"reviews": {"nodes": {"Sentiment": {"max_batch_size": 4}}}}})


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"max_bdy_size": 1}, "unknown setting 'max_bdy_size'. Did you mean 'max_body_size'?"),
        ({"token": "s3cret"}, "token does not belong in a config file"),
        ({"admin_token": "s3cret"}, "set $DAGSERVE_ADMIN_TOKEN"),
        ({"max_in_flight": 0}, "max_in_flight=0"),
        ({"max_body_size": "ten"}, "'ten' is not a size"),
        ({"allowed_hosts": ["bad host"]}, "server:"),
    ],
)
def test_bad_server_settings_are_errors(server: dict[str, object], message: str) -> None:
    with pytest.raises(dagserve.OptionsError) as info:
        server_config(load_config({"server": server}))
    assert message in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("graphs: [unclosed\n")
    with pytest.raises(dagserve.OptionsError, match=f"Config file {path} is not valid YAML"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(dagserve.OptionsError, match="must hold a mapping"):
        load_config(path)
    path.write_text("servr: {}\n")
    with pytest.raises(dagserve.OptionsError, match=f"config file {path}: unknown section 'servr'"):
        load_config(path)
    with pytest.raises(dagserve.OptionsError, match="Cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("")
    assert load_config(path).graphs == {}


def test_a_file_for_several_graphs_configures_each() -> None:
    config = {"graphs": {"reviews": {"nodes": {"clean": {"retries": 2}}}, "other": {"nodes": {"x": {}}}}}
    assert graph_overrides(config, "reviews", others=["other"]) == {"clean": {"retries": 2}}
    with pytest.raises(dagserve.OptionsError, match="'other', which is not deployed here"):
        graph_overrides(config, "reviews")


def test_sizes_round_trip() -> None:
    assert parse_size("1MiB") == 1024**2 and format_size(1024**2) == "1MiB"
    assert format_size(3 * 1024) == "3KiB" and format_size(1000) == "1000" and format_size(2 * 1024**3) == "2GiB"


def test_compile_applies_options_before_lowering() -> None:
    # `inline` is read into the steps as well as the deployment: both follow the option given to compile.
    plan = dagserve.compile(reviews, options={"clean": {"inline": True}})
    assert plan.deployment("clean").inline
    assert [s.inline for s in plan.steps if s.deployment == "clean"] == [True]
    assert not any(s.inline for s in dagserve.compile(reviews).steps if s.deployment == "clean")
