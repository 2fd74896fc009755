"""moto's S3 emulator (server mode) in its own process: ``python -m bench.s3emu --spec {} [--cpus 1]``."""

from __future__ import annotations

import argparse
import logging
import signal
import threading


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec")
    parser.add_argument("--cpus")
    args = parser.parse_args()
    from bench.common import emit, pin

    pin(args.cpus)
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    emit({"ready": True, "port": port, "url": f"http://{host}:{port}"})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
