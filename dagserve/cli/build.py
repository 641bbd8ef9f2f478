"""``dagserve build MODULE:ATTR -o serve.yaml``: a file Ray's own tools deploy.

::

    dagserve build examples.quickstart:graph -o serve.yaml            # then: serve deploy serve.yaml
    dagserve build examples.quickstart:graph --format rayservice -o rayservice.yaml   # kubectl apply -f

The file is written by ``dagserve.rayserve.config_files``; Serve builds the application on the
cluster with ``dagserve.rayserve.application:build``. Node options come from the code and ``--config``.
"""

from __future__ import annotations

from typing import Any

import click

from dagserve._errors import DagserveError
from dagserve.cli.config import check_config, config_option, read_config, with_server_config
from dagserve.cli.targets import app_dir_option, load_graphs
from dagserve.http.settings import ADMIN_TOKEN_ENV, TOKEN_ENV

__all__ = ["build_command"]


@click.command("build")
@click.argument("target", metavar="MODULE:ATTR")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default="-", show_default=True, help="File to write (- for stdout).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["serve", "rayservice"]),
    default="serve",
    show_default=True,
    help="serve: a Ray Serve config file for `serve deploy`; rayservice: a KubeRay RayService manifest.",
)
@config_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of Serve's HTTP proxy (serve format).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port of Serve's HTTP proxy.")
@click.option("--ingress-replicas", default=1, show_default=True, type=click.IntRange(min=1), help="Replicas of dagserve's ingress deployment.")
@click.option("--working-dir", default=None, help="runtime_env working_dir: a directory or URI with your code, for a cluster without it.")
@click.option("--name", default=None, help="The RayService's name [default: from the first graph's name].")
@click.option("--image", default=None, help="Container image of the Ray cluster (rayservice): Ray 2.60 with dagserve and your code.")
@app_dir_option
@click.pass_context
def build_command(
    ctx: click.Context, target: str, output: str, fmt: str, config_file: str | None, app_dir: str | None, **options: Any
) -> None:
    """Write a Ray Serve config file (or a KubeRay RayService) for the graph(s) at MODULE:ATTR.

    Every node becomes its own Serve deployment with its options, served through dagserve's
    ingress deployment behind Serve's HTTP proxy. Deploy it with `serve deploy serve.yaml`;
    change one node's num_replicas in the file and `serve deploy` again to scale that node only.
    Tokens are not written: the cluster's $DAGSERVE_TOKEN / $DAGSERVE_ADMIN_TOKEN are used.
    """
    from dagserve.rayserve.config_files import RAY_IMAGE, dump_yaml, kubernetes_name, rayservice_manifest, serve_config

    config = read_config(config_file)
    options = with_server_config(ctx, options, config)  # the file's server host and port, under the flags
    graphs = load_graphs(target, app_dir)
    check_config(config, graphs)
    try:
        document = serve_config(
            target,
            graphs,
            config,
            host=options["host"],
            port=options["port"],
            ingress_replicas=options["ingress_replicas"],
            working_dir=options["working_dir"],
        )
        if fmt == "rayservice":
            if not options["image"]:
                click.echo(
                    f"dagserve: warning: no --image; the manifest runs {RAY_IMAGE}, which holds neither dagserve "
                    "nor your code, so its replicas cannot start. Build an image FROM it that installs both (a "
                    "Dockerfile is in docs/deploy.md#kuberay) and pass it with --image.",
                    err=True,
                )
            name = kubernetes_name(options["name"] or graphs[0].name)
            document = rayservice_manifest(document, name=name, image=options["image"] or RAY_IMAGE)
    except DagserveError as exc:
        raise click.ClickException(str(exc)) from None
    how = "kubectl apply -f FILE" if fmt == "rayservice" else "serve deploy FILE"
    text = f"# Written by `dagserve build {target}`; deploy with `{how}` (docs/deploy.md).\n"
    text += f"# No tokens here: the ingress reads ${TOKEN_ENV} and ${ADMIN_TOKEN_ENV} from the cluster's environment.\n"
    text += dump_yaml(document)
    if output == "-":
        click.echo(text, nl=False)
        return
    with open(output, "w") as f:
        f.write(text)
    click.echo(f"dagserve: wrote {output}; deploy it with `{how.replace('FILE', output)}`.", err=True)
