"""`python -m ingress`: the same as `gms-relay ingress`, without importing the entry-point package."""

from __future__ import annotations

import argparse
import os
import sys

from ingress.server import serve
from shared.errors import ConfigError
from shared.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingress", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--processes", type=int, default=1, help="uvicorn processes sharing the port (one per busy GMS node)"
    )
    args = parser.parse_args(argv)
    try:
        serve(load_settings(os.environ), host=args.host, port=args.port, processes=args.processes)
    except ConfigError as exc:
        print(f"gms-relay: configuration error: {exc.detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
