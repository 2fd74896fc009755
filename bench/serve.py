"""mediagen itself, in its own process, as ``mediagen-server`` would run it.

    python -m bench.serve --spec spec.json [--cpus 0]

spec.json:
    settings:   overrides for ``load_settings`` (data_dir, poll_interval, ...)
    vendor_url: register the bench HTTP-polling provider (bench.vendor) against
                this fake vendor, next to the mock providers
    chunk_size: download chunk size for this run (the chunk-size sweep only;
                the default is providers.storage.base.CHUNK_SIZE)

Prints one JSON line when serving: the port, and when the process started, the
imports ended and ``MediagenServer.start()`` returned (wall clock, so the
parent can subtract its own spawn time), and how many jobs ``start`` recovered.
Stops gracefully on SIGTERM, like ``serve_until_signal``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import time

T0 = time.time()


async def serve(spec: dict) -> None:
    from bench.common import emit
    from server.app import MediagenServer
    from server.config import Settings, load_settings
    from server.logs import configure_logging

    imported = time.time()
    known = {f.name for f in dataclasses.fields(Settings)}
    overrides = {k: v for k, v in spec.get("settings", {}).items() if k in known}
    if "metrics_listen" in known:
        overrides.setdefault("metrics_listen", "127.0.0.1:0")  # on, as in production, on a free port
    settings = load_settings(environ={}, listen="127.0.0.1:0", **overrides)
    configure_logging(settings.log_level, "json")
    registry = None
    if spec.get("vendor_url"):
        from bench.vendor import bench_registry

        registry = bench_registry(settings, spec["vendor_url"])
    if spec.get("prerendered_mock"):
        registry = prerendered_registry(settings)
    server = MediagenServer(settings, registry=registry)
    if spec.get("chunk_size"):
        # Bench-only: the sweep tries several sizes without editing the source.
        type(server.storage).read.__kwdefaults__["chunk_size"] = int(spec["chunk_size"])
    begun = time.time()
    await server.start()
    emit(
        {
            "ready": True,
            "port": server.port,
            "t0": T0,
            "imported_at": imported,
            "start_called_at": begun,
            "serving_at": time.time(),
            "recovered": server.runner.in_flight(),
        }
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)


def prerendered_registry(settings):
    """The mock providers, with mock images rendered once per size and copied after that.

    Rendering even a 16×16 PNG costs the mock ~5 ms of Python (GIL held), which
    would cap an end-to-end run at ~200 jobs/s before the server does anything.
    Everything else a mock job does is unchanged: submit, poll, open_output
    streaming a real PNG file, storage write with fsync, probe, events.
    """
    import shutil

    from providers.mock.provider import MockImage, mock_providers
    from providers.registry import ProviderRegistry

    cache: dict[str, str] = {}

    class PrerenderedMockImage(MockImage):
        def render(self, path: str, args: dict) -> None:
            key = f"{args['width']}x{args['height']}.{args['format']}"
            if key not in cache:
                super().render(path, args)
                cache[key] = path + ".first"
                shutil.copyfile(path, cache[key])
                return
            shutil.copyfile(cache[key], path)

    providers = [PrerenderedMockImage(settings) if isinstance(p, MockImage) else p for p in mock_providers(settings)]
    return ProviderRegistry(providers, settings.default_providers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--cpus")
    args = parser.parse_args()
    from bench.common import pin

    pin(args.cpus)
    with open(args.spec) as handle:
        spec = json.load(handle)
    profile_to = os.environ.get("BENCH_CPROFILE")
    if profile_to:  # profiling aid: cProfile of the event loop thread, written on exit
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(serve(spec))
        finally:
            profiler.disable()
            profiler.dump_stats(profile_to)
        return
    asyncio.run(serve(spec))


if __name__ == "__main__":
    main()
