"""``dagserve build``: the Serve config file and the KubeRay RayService it writes, checked against
Serve's own config schema and KubeRay's published RayService CRD (tests/data/kuberay, pinned)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

import dagserve
from dagserve.backends.ray.cluster import serve_env
from dagserve.cli.main import main
from dagserve.rayserve.application import IMPORT_PATH, build

CRD = Path(__file__).resolve().parents[1] / "data" / "kuberay" / "ray.io_rayservices.yaml"


def run_build(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["build", *args], env=env)
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


def test_every_node_is_a_deployment_with_its_options(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    config = tmp_path / "c.yaml"
    config.write_text("graphs:\n  reviews:\n    nodes:\n      Toxicity:\n        max_batch_size: 4\n        num_cpus: 0.5\n")
    doc = run_build("examples.quickstart:graph", "--config", str(config), "--port", "8123")
    ServeDeploySchema.model_validate(doc)  # Serve's own schema of `serve deploy` files
    assert doc["http_options"] == {"host": "127.0.0.1", "port": 8123}
    (app,) = doc["applications"]
    assert app["import_path"] == IMPORT_PATH == "dagserve.rayserve.application:build"
    assert app["route_prefix"] == "/"
    assert app["args"]["target"] == "examples.quickstart:graph" and app["args"]["graph"] == "reviews"
    assert app["args"]["config"]["graphs"]["reviews"]["nodes"]["Toxicity"]["max_batch_size"] == 4  # Serve does not know it
    assert app["runtime_env"]["env_vars"] == serve_env() and serve_env()["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    deployments = {d["name"]: d for d in app["deployments"]}
    assert list(deployments) == ["clean", "Sentiment", "Toxicity", "respond", "not_supported", "dagserve-ingress"]
    assert deployments["Sentiment"]["num_replicas"] == 2  # from code
    assert deployments["Toxicity"]["ray_actor_options"] == {"num_cpus": 0.5}  # from the file
    assert deployments["Toxicity"]["max_ongoing_requests"] == 100
    assert deployments["dagserve-ingress"] == {"name": "dagserve-ingress", "num_replicas": 1}


def test_tokens_stay_out_of_the_file() -> None:
    secret = "do-not-write-me-0123456789"
    doc = run_build("examples.quickstart:graph", env={"DAGSERVE_TOKEN": secret, "DAGSERVE_ADMIN_TOKEN": secret})
    assert secret not in yaml.safe_dump(doc)


def test_a_working_dir_ships_the_code() -> None:
    doc = run_build("examples.quickstart:graph", "--working-dir", "s3://bucket/code.zip")
    assert doc["applications"][0]["runtime_env"]["working_dir"] == "s3://bucket/code.zip"


def test_several_graphs_are_several_applications() -> None:
    doc = run_build("tests.ingress_graphs:BOTH", "--ingress-replicas", "2")
    assert [(a["name"], a["route_prefix"]) for a in doc["applications"]] == [("typed", "/typed"), ("echo", "/echo")]
    assert doc["applications"][1]["deployments"][-1] == {"name": "dagserve-ingress", "num_replicas": 2}


def test_the_builder_makes_the_application_serve_deploys() -> None:
    doc = run_build("examples.quickstart:graph")
    from ray.serve._private.build_app import build_app

    # What Serve's build task does with the file's import_path and args.
    built = build_app(build(doc["applications"][0]["args"]), name="reviews")
    assert built.ingress_deployment_name == "dagserve-ingress"
    names = {d.name for d in built.deployments}
    assert names == {"clean", "Sentiment", "Toxicity", "respond", "not_supported", "dagserve-ingress"}
    with pytest.raises(dagserve.DagserveError, match="unknown argument 'targt'. Did you mean 'target'?"):
        build({"targt": "examples.quickstart:graph"})
    with pytest.raises(dagserve.GraphError, match="has no graph 'typd'. Did you mean 'typed'?"):
        build({"target": "tests.ingress_graphs:BOTH", "graph": "typd"})


@cache
def rayservice_validator() -> jsonschema.Draft4Validator:
    """KubeRay's RayService v1 schema (OpenAPI v3, a JSON Schema draft 4 dialect), read once."""
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft4Validator(v1["schema"]["openAPIV3Schema"])


def test_the_rayservice_manifest_is_valid_against_kuberays_crd() -> None:
    from ray.serve.schema import ServeDeploySchema

    manifest = run_build("examples.quickstart:graph", "--format", "rayservice", "--image", "registry.example/reviews:1")
    rayservice_validator().validate(manifest)
    assert manifest["kind"] == "RayService" and manifest["metadata"]["name"] == "reviews"
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}  # Ray's token authentication
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "registry.example/reviews:1"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in head["env"]}
    assert refs["DAGSERVE_ADMIN_TOKEN"] == {"name": "reviews-dagserve", "key": "admin-token", "optional": True}
    serve_v2 = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_v2)
    assert serve_v2["applications"][0]["args"]["config"]["server"]["host"] == "0.0.0.0"


def test_the_manifest_is_written_for_hands_a_literal_serve_config_and_no_anchors() -> None:
    result = CliRunner().invoke(main, ["build", "examples.quickstart:graph", "--format", "rayservice", "--image", "x:1"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "  serveConfigV2: |\n    applications:\n" in text
    assert "&id" not in text and "*id" not in text  # no YAML anchors or aliases
    assert "warning" not in result.output
    # An edit by hand of one node's replicas is a one-line change that still parses.
    edited = text.replace("        num_replicas: 2\n", "        num_replicas: 5\n", 1)
    serve_v2 = yaml.safe_load(yaml.safe_load(edited)["spec"]["serveConfigV2"])
    sentiment = next(d for d in serve_v2["applications"][0]["deployments"] if d["name"] == "Sentiment")
    assert sentiment["num_replicas"] == 5


def test_a_manifest_without_an_image_warns_how_to_build_one() -> None:
    result = CliRunner().invoke(main, ["build", "examples.quickstart:graph", "--format", "rayservice"])
    assert result.exit_code == 0, result.output
    warning = " ".join(result.stderr.split())
    assert "no --image" in warning and "rayproject/ray:2.60.0" in warning and "docs/deploy.md#kuberay" in warning
    assert yaml.safe_load(result.stdout)["kind"] == "RayService"  # the warning stays off stdout


def test_the_docs_dockerfile_uses_the_pinned_ray() -> None:
    """docs/deploy.md's Dockerfile starts FROM the image `dagserve build` targets, whose Ray is
    the one pyproject.toml pins: a Ray upgrade that forgets one of the three fails here."""
    import re
    import tomllib

    from dagserve.rayserve.config_files import RAY_IMAGE, RAY_VERSION

    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("ray[")]
    assert pin.endswith(f"=={RAY_VERSION}"), pin
    docs = (root / "docs" / "deploy.md").read_text()
    (dockerfile,) = re.findall(r"```dockerfile\n(.*?)```", docs, re.S)
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == [RAY_IMAGE]
    assert "pip install" in dockerfile and "dagserve" in dockerfile and "COPY . ." in dockerfile


def test_a_manifest_kuberay_would_refuse_fails_validation() -> None:
    manifest = run_build("examples.quickstart:graph", "--format", "rayservice")
    manifest["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "password"
    with pytest.raises(jsonschema.ValidationError, match="'password' is not one of"):
        rayservice_validator().validate(manifest)


def test_build_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(main, ["build", "examples.quickstart:graph", "-o", str(out)])
    assert result.exit_code == 0 and f"serve deploy {out}" in result.output
    assert out.read_text().startswith("# Written by `dagserve build examples.quickstart:graph`")
