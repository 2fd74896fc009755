"""Entry point: ``mediagen-server [--config FILE] [--listen ADDR]``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from server.config import ConfigError, load_settings
from server.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mediagen-server", description="Serve the mediagen gRPC API.")
    parser.add_argument("--config", help="TOML settings file (also MEDIAGEN_CONFIG)")
    parser.add_argument("--listen", help="address to serve on, e.g. 0.0.0.0:50051 (also MEDIAGEN_LISTEN)")
    args = parser.parse_args(argv)
    overrides = {"listen": args.listen} if args.listen else {}
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"mediagen-server: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from server.app import serve_until_signal

    asyncio.run(serve_until_signal(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
