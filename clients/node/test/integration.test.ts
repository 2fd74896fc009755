/**
 * The Node client against a live mediagen server (mock providers).
 *
 * Run by tests/test_node_client.py, which starts the server and passes its
 * address in MEDIAGEN_TEST_ADDRESS. By hand: `make run` in one shell, then
 * `MEDIAGEN_TEST_ADDRESS=localhost:50051 npm test` here.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import {
  IntegrityError,
  MEDIA_KINDS,
  MediagenClient,
  MediagenError,
  isEnded,
  jobError,
  toStruct,
  type GenerateRequests,
  type JobEvent,
  type MediaKind,
} from "../src/index";

const address = process.env.MEDIAGEN_TEST_ADDRESS;
if (!address) throw new Error("set MEDIAGEN_TEST_ADDRESS to a running mediagen server, e.g. localhost:50051");

const REQUESTS: GenerateRequests = {
  video: { prompt: "a red fox in snow", durationSeconds: 2, aspectRatio: "1:1" },
  speech: { text: "Hello from the Node client." },
  music: { prompt: "calm piano", durationSeconds: 2 },
  soundEffect: { prompt: "a door creaks open", durationSeconds: 1 },
  image: { prompt: "a lighthouse at dusk", width: 64, height: 48 },
};

/** What the first bytes of each kind's default output must be. */
function assertMagic(kind: MediaKind, contentType: string, data: Buffer): void {
  if (kind === "video") {
    assert.equal(contentType, "video/mp4");
    assert.equal(data.subarray(4, 8).toString("latin1"), "ftyp");
  } else if (kind === "image") {
    assert.equal(contentType, "image/png");
    assert.deepEqual([...data.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.equal(data.readUInt32BE(16), 64); // IHDR width
    assert.equal(data.readUInt32BE(20), 48); // IHDR height
  } else {
    assert.match(contentType, /^audio\//);
    if (contentType === "audio/wav") assert.equal(data.subarray(0, 4).toString("latin1"), "RIFF");
  }
}

async function collect(events: AsyncIterable<JobEvent>): Promise<JobEvent[]> {
  const seen: JobEvent[] = [];
  for await (const event of events) seen.push(event);
  return seen;
}

let client: MediagenClient;
let workdir: string;

before(() => {
  client = new MediagenClient(address, { deadlineMs: 10_000 });
  workdir = mkdtempSync(path.join(tmpdir(), "mediagen-node-"));
});

after(() => client.close());

describe("one job of each media type", () => {
  for (const kind of MEDIA_KINDS) {
    test(`${kind}: generate, watch to the end, download, verify sha256`, async () => {
      const job = await client.generate(kind, REQUESTS[kind]);
      assert.match(job.id, /^job_[0-9a-f]{32}$/);
      assert.equal(job.state, "JOB_STATE_QUEUED");
      assert.equal(job.provider, "mock");

      const events = await collect(client.watch(kind, job.id));
      assert.deepEqual(
        events.map((e) => Number(e.sequence)),
        events.map((_, i) => i + 1),
        "sequence numbers count up from 1 without gaps",
      );
      assert.equal(events[0].type, "JOB_EVENT_TYPE_CREATED");
      const last = events[events.length - 1];
      assert.equal(last.type, "JOB_EVENT_TYPE_ENDED");
      assert.equal(last.job?.state, "JOB_STATE_SUCCEEDED");
      assert.ok(isEnded(last.job!.state));
      assert.ok(events.slice(0, -1).every((e) => !isEnded(e.job!.state)));

      const now = await client.getJob(kind, job.id);
      assert.equal(now.state, "JOB_STATE_SUCCEEDED");
      assert.equal(now.lastSequence, last.sequence);
      assert.equal(jobError(now), undefined);
      const artifact = now.artifacts[0];

      const { artifact: announced, data } = await client.download(kind, job.id);
      assert.equal(announced.sha256, artifact.sha256);
      assert.equal(data.length, Number(artifact.sizeBytes));
      assert.equal(createHash("sha256").update(data).digest("hex"), artifact.sha256);
      assertMagic(kind, artifact.contentType, data);

      const file = path.join(workdir, `${kind}-${job.id}`);
      const saved = await client.downloadToFile(kind, job.id, file);
      assert.equal(saved.sha256, artifact.sha256);
      assert.deepEqual(readFileSync(file), data);
    });
  }
});

describe("watch", () => {
  test("resumes after a sequence number with exactly the events missed", async () => {
    const job = await client.generate("video", REQUESTS.video);
    const all = await collect(client.watch("video", job.id));
    const cut = Math.floor(all.length / 2);
    const rest = await collect(client.watch("video", job.id, { afterSequence: all[cut - 1].sequence }));
    assert.deepEqual(
      rest.map((e) => e.sequence),
      all.slice(cut).map((e) => e.sequence),
    );
    // After the end there is nothing more to see: the stream just closes.
    assert.deepEqual(await collect(client.watch("video", job.id, { afterSequence: all[all.length - 1].sequence })), []);
  });

  test("reconnects after the connection drops and misses nothing", async () => {
    // A TCP proxy in front of the server whose connections we cut mid-stream.
    const sockets = new Set<net.Socket>();
    const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))];
    const proxy = net.createServer((inbound) => {
      const outbound = net.connect(port, host);
      for (const s of [inbound, outbound]) {
        sockets.add(s);
        s.on("error", () => {});
        s.on("close", () => sockets.delete(s));
      }
      inbound.pipe(outbound).pipe(inbound);
    });
    await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
    const proxied = new MediagenClient(`127.0.0.1:${(proxy.address() as net.AddressInfo).port}`);
    try {
      const job = await proxied.generate("speech", {
        ...REQUESTS.speech,
        providerOptions: toStruct({ mock_latency_seconds: 1.5 }),
      });
      const seen: JobEvent[] = [];
      let cuts = 0;
      for await (const event of proxied.watch("speech", job.id)) {
        seen.push(event);
        if (seen.length === 2) {
          cuts = sockets.size;
          for (const s of sockets) s.destroy();
        }
      }
      assert.ok(cuts > 0, "the proxy had connections to cut");
      assert.deepEqual(
        seen.map((e) => Number(e.sequence)),
        seen.map((_, i) => i + 1),
      );
      assert.equal(seen[seen.length - 1].type, "JOB_EVENT_TYPE_ENDED");

      // Without reconnections the same cut is an UNAVAILABLE error.
      const again = await proxied.generate("speech", {
        ...REQUESTS.speech,
        providerOptions: toStruct({ mock_latency_seconds: 1.5 }),
      });
      await assert.rejects(
        (async () => {
          for await (const _ of proxied.watch("speech", again.id, { maxReconnects: 0 })) {
            for (const s of sockets) s.destroy();
          }
        })(),
        (err: unknown) => err instanceof MediagenError && err.code === grpc.status.UNAVAILABLE,
      );
    } finally {
      proxied.close();
      for (const s of sockets) s.destroy();
      proxy.close();
    }
  });

  test("breaking out of the loop ends the stream", async () => {
    const job = await client.generate("speech", {
      ...REQUESTS.speech,
      providerOptions: toStruct({ mock_latency_seconds: 20 }),
    });
    for await (const event of client.watch("speech", job.id)) {
      assert.equal(event.type, "JOB_EVENT_TYPE_CREATED");
      break;
    }
    await client.cancel("speech", job.id);
  });
});

describe("cancel and errors", () => {
  test("cancel ends a running job as CANCELLED, with its reason", async () => {
    const job = await client.generate("music", {
      ...REQUESTS.music,
      providerOptions: toStruct({ mock_latency_seconds: 30 }),
    });
    const cancelled = await client.cancel("music", job.id);
    assert.equal(cancelled.state, "JOB_STATE_CANCELLED");
    const events = await collect(client.watch("music", job.id));
    assert.equal(events[events.length - 1].job?.state, "JOB_STATE_CANCELLED");
    const error = jobError(await client.getJob("music", job.id));
    assert.ok(error);
    assert.equal(error.code, grpc.status.CANCELLED);
    assert.equal(error.reason, "JOB_CANCELLED");
  });

  test("a bad request is INVALID_ARGUMENT naming the field", async () => {
    await assert.rejects(client.generate("video", { prompt: "" }), (err: unknown) => {
      assert.ok(err instanceof MediagenError);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(err.codeName, "INVALID_ARGUMENT");
      assert.equal(err.domain, "mediagen.v1");
      assert.ok(err.reason);
      assert.deepEqual(
        err.fieldViolations.map((v) => [v.field, v.reason]),
        [["prompt", "REQUIRED"]],
      );
      return true;
    });
  });

  test("an unknown job is NOT_FOUND with reason JOB_NOT_FOUND", async () => {
    const missing = `job_${"0".repeat(32)}`;
    await assert.rejects(client.getJob("image", missing), (err: unknown) => {
      assert.ok(err instanceof MediagenError);
      assert.equal(err.code, grpc.status.NOT_FOUND);
      assert.equal(err.reason, "JOB_NOT_FOUND");
      assert.equal(err.metadata.jobId, missing);
      return true;
    });
  });

  test("a failed mock job carries its google.rpc.Status", async () => {
    const job = await client.generate("image", { ...REQUESTS.image, providerOptions: toStruct({ mock_behavior: "fail" }) });
    const events = await collect(client.watch("image", job.id));
    const ended = events[events.length - 1].job!;
    assert.equal(ended.state, "JOB_STATE_FAILED");
    assert.equal(jobError(ended)?.reason, "PROVIDER_JOB_FAILED");
  });

  test("the same request_id gives the same job", async () => {
    const requestId = "123e4567-e89b-12d3-a456-426614174000";
    const first = await client.generate("image", { ...REQUESTS.image, requestId });
    const again = await client.generate("image", { ...REQUESTS.image, requestId });
    assert.equal(again.id, first.id);
  });
});

describe("downloadToFile", () => {
  test("continues a .part left by a broken download and checks the whole file", async () => {
    const job = await client.generate("image", REQUESTS.image);
    await collect(client.watch("image", job.id));
    const { artifact, data } = await client.download("image", job.id);
    const file = path.join(workdir, "resumed.png");
    writeFileSync(`${file}.part`, data.subarray(0, 100));
    const saved = await client.downloadToFile("image", job.id, file);
    assert.equal(saved.sha256, artifact.sha256);
    assert.deepEqual(readFileSync(file), data);
    assert.ok(!existsSync(`${file}.part`));
  });

  test("a corrupt .part fails the sha256 check and is removed", async () => {
    const job = await client.generate("image", REQUESTS.image);
    await collect(client.watch("image", job.id));
    const file = path.join(workdir, "corrupt.png");
    writeFileSync(`${file}.part`, Buffer.alloc(100, 0x42));
    await assert.rejects(client.downloadToFile("image", job.id, file), IntegrityError);
    assert.ok(!existsSync(`${file}.part`) && !existsSync(file));
    const saved = await client.downloadToFile("image", job.id, file);
    assert.equal(saved.sizeBytes, readFileSync(file).length);
  });
});

test("the catalog lists the mock provider of each media type", async () => {
  const providers = await client.listProviders();
  const mocks = providers.filter((p) => p.name === "mock").map((p) => p.mediaType);
  for (const type of ["MEDIA_TYPE_VIDEO", "MEDIA_TYPE_SPEECH", "MEDIA_TYPE_MUSIC", "MEDIA_TYPE_SOUND_EFFECT", "MEDIA_TYPE_IMAGE"]) {
    assert.ok(mocks.includes(type as (typeof mocks)[number]), `mock ${type}`);
  }
});

describe("upload", () => {
  /** A PNG signature and IHDR (the server judges type and size from these), then random bytes. */
  function pngFile(name: string, width: number, height: number, bodyBytes: number): string {
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(width, 0);
    ihdr.writeUInt32BE(height, 4);
    ihdr.set([8, 2, 0, 0, 0], 8);
    const head = Buffer.concat([
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13]),
      Buffer.from("IHDR", "latin1"),
      ihdr,
      Buffer.alloc(4),
    ]);
    const file = path.join(workdir, name);
    writeFileSync(file, Buffer.concat([head, randomBytes(bodyBytes)]));
    return file;
  }

  test("streams a file above 4 MiB from disk, and the asset is a job's first frame", async () => {
    const file = pngFile("frame.png", 1920, 1080, 6 * 1024 * 1024);
    const sent: number[] = [];
    const asset = await client.upload(file, { onProgress: (done) => sent.push(done) });
    const local = createHash("sha256").update(readFileSync(file)).digest("hex");
    assert.match(asset.id, /^asset_[0-9a-f]{32}$/);
    assert.equal(asset.sha256, local);
    assert.equal(Number(asset.sizeBytes), readFileSync(file).length);
    assert.equal(asset.contentType, "image/png");
    assert.equal(asset.width, 1920);
    assert.equal(asset.height, 1080);
    assert.equal(asset.filename, "frame.png");
    assert.equal(sent.length, 7); // 1 MiB chunks
    assert.equal((await client.getAsset(asset.id)).sha256, local);

    const job = await client.generate("video", { prompt: "waves", durationSeconds: 1, inputImage: { assetId: asset.id } });
    const events = await collect(client.watch("video", job.id));
    const done = events[events.length - 1].job!;
    assert.equal(done.state, "JOB_STATE_SUCCEEDED");
    assert.equal(done.artifacts[0].metadata.inputSha256, local);

    await client.deleteAsset(asset.id);
    await assert.rejects(client.getAsset(asset.id), (err: unknown) => err instanceof MediagenError && err.reason === "ASSET_NOT_FOUND");
  });

  test("a file the server does not take is refused with the limit named", async () => {
    const file = path.join(workdir, "anim.gif");
    writeFileSync(file, Buffer.concat([Buffer.from("GIF89a", "latin1"), randomBytes(3 * 1024 * 1024)]));
    await assert.rejects(client.upload(file), (err: unknown) => {
      assert.ok(err instanceof MediagenError);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(err.reason, "ASSET_TYPE_UNSUPPORTED");
      assert.equal(err.fieldViolations[0]?.field, "chunk");
      return true;
    });
  });
});
