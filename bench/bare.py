"""The baseline: a minimal grpc.aio server answering the same RPCs with no logic.

``GetVideoJob`` returns one prebuilt response (a Job parsed once from a dict: the
same message mediagen returns for the same job). ``DownloadVideo`` streams the
same file in the same chunk size, the first message carrying the same Artifact.
``WatchVideoJob`` sends the events it is given. Nothing else: no store, no
validation, no error mapping, no interceptors, no health or reflection services.

    python -m bench.bare --spec spec.json [--cpus 0]

spec.json: {"job": {...Job as JSON...}, "file": "/path", "chunk_size": N}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

T0 = time.time()


async def serve(spec: dict) -> None:
    import grpc
    from google.protobuf import json_format

    from bench.common import emit
    from mediagen.v1 import common_pb2, video_pb2, video_pb2_grpc

    job = json_format.ParseDict(spec.get("job") or {}, common_pb2.Job())
    get_response = video_pb2.GetVideoJobResponse(job=job)
    artifact = job.artifacts[0] if job.artifacts else common_pb2.Artifact()
    path = spec.get("file", "")
    chunk_size = int(spec.get("chunk_size") or 3 * 128 * 1024)
    s3 = spec.get("s3")  # {"endpoint", "bucket", "key"}: stream the object from S3 instead

    class Bare(video_pb2_grpc.VideoServiceServicer):
        async def GetVideoJob(self, request, context):
            return get_response

        async def DownloadVideo(self, request, context):
            first = artifact
            position = 0
            if s3:
                async for chunk in _s3_chunks(s3, chunk_size):
                    yield video_pb2.DownloadVideoResponse(offset=position, data=chunk, artifact=first)
                    position += len(chunk)
                    first = None
                return
            # Blocking reads on the loop on purpose: the least a server can do (page cache warm).
            with open(path, "rb") as handle:  # noqa: ASYNC230
                while chunk := handle.read(chunk_size):
                    yield video_pb2.DownloadVideoResponse(offset=position, data=chunk, artifact=first)
                    position += len(chunk)
                    first = None

    server = grpc.aio.server(options=[("grpc.max_send_message_length", 4 * 1024 * 1024)])
    video_pb2_grpc.add_VideoServiceServicer_to_server(Bare(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    emit({"ready": True, "port": port, "t0": T0, "serving_at": time.time()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


async def _s3_chunks(s3: dict, chunk_size: int):
    """Stream an S3 object in a worker thread (boto3 is blocking), ``chunk_size`` at a time."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(s3={"addressing_style": "path"}),
    )
    body = (await asyncio.to_thread(client.get_object, Bucket=s3["bucket"], Key=s3["key"]))["Body"]
    try:
        while chunk := await asyncio.to_thread(body.read, chunk_size):
            yield chunk
    finally:
        body.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--cpus")
    args = parser.parse_args()
    from bench.common import pin

    pin(args.cpus)
    with open(args.spec) as handle:
        spec = json.load(handle)
    asyncio.run(serve(spec))


if __name__ == "__main__":
    main()
