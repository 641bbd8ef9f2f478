"""``python -m examples.embedding_app``: serve the web app (with its mounted graph) on 127.0.0.1:8000."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    from .app import create_app

    parser = argparse.ArgumentParser(prog="python -m examples.embedding_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.backend), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
