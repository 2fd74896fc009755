/**
 * A thin typed client for the mediagen gRPC API.
 *
 * The stubs are not generated code: @grpc/proto-loader reads the contract from
 * the repository's protos/ at run time (google/rpc/status.proto from
 * third_party/googleapis, google/protobuf/* from proto-loader's bundled
 * well-known types). The TypeScript types in ./generated are made from the same
 * files by proto-loader-gen-types at build time, so this wrapper stops
 * compiling when it uses a field the contract no longer has.
 *
 * Conventions of the loaded messages: field names are lowerCamelCase, enums are
 * their names ("JOB_STATE_SUCCEEDED"), 64-bit integers are decimal strings (as
 * in proto3 JSON), bytes are Buffers, and unset fields carry their defaults.
 */
import { createHash, randomUUID } from "node:crypto";
import { createReadStream, createWriteStream, existsSync, readdirSync } from "node:fs";
import { rename, rm, stat } from "node:fs/promises";
import * as path from "node:path";
import { once } from "node:events";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import * as protobuf from "protobufjs";

import type { ProtoGrpcType as AssetProto } from "./generated/asset";
import type { ProtoGrpcType as CatalogProto } from "./generated/catalog";
import type { ProtoGrpcType as ImageProto } from "./generated/image";
import type { ProtoGrpcType as MusicProto } from "./generated/music";
import type { ProtoGrpcType as SoundEffectProto } from "./generated/sound_effect";
import type { ProtoGrpcType as SpeechProto } from "./generated/speech";
import type { ProtoGrpcType as VideoProto } from "./generated/video";
import type { Artifact__Output } from "./generated/mediagen/v1/Artifact";
import type { Asset__Output } from "./generated/mediagen/v1/Asset";
import type { GenerateImageRequest } from "./generated/mediagen/v1/GenerateImageRequest";
import type { GenerateMusicRequest } from "./generated/mediagen/v1/GenerateMusicRequest";
import type { GenerateSoundEffectRequest } from "./generated/mediagen/v1/GenerateSoundEffectRequest";
import type { GenerateSpeechRequest } from "./generated/mediagen/v1/GenerateSpeechRequest";
import type { GenerateVideoRequest } from "./generated/mediagen/v1/GenerateVideoRequest";
import type { Job__Output } from "./generated/mediagen/v1/Job";
import type { JobEvent__Output } from "./generated/mediagen/v1/JobEvent";
import type { JobState } from "./generated/mediagen/v1/JobState";
import type { MediaType } from "./generated/mediagen/v1/MediaType";
import type { Provider__Output } from "./generated/mediagen/v1/Provider";
import type { Status__Output } from "./generated/google/rpc/Status";
import type { Struct } from "./generated/google/protobuf/Struct";
import type { Value } from "./generated/google/protobuf/Value";

export type Job = Job__Output;
export type JobEvent = JobEvent__Output;
export type Artifact = Artifact__Output;
export type Provider = Provider__Output;
export type Asset = Asset__Output;

/** Bytes per UploadAsset message (the server takes at most 1 MiB). */
export const UPLOAD_CHUNK_SIZE = 1024 * 1024;
/** An upload's default deadline: `deadlineMs` plus one second per this many bytes. */
const UPLOAD_MIN_RATE = 256 * 1024;
/** Response header by which the server refuses an upload while the client may still be sending. */
const REFUSED_HEADER = "mediagen-upload-refused";

/** The request message of each media type's Generate RPC. */
export interface GenerateRequests {
  video: GenerateVideoRequest;
  speech: GenerateSpeechRequest;
  music: GenerateMusicRequest;
  soundEffect: GenerateSoundEffectRequest;
  image: GenerateImageRequest;
}
export type MediaKind = keyof GenerateRequests;
export const MEDIA_KINDS: readonly MediaKind[] = ["video", "speech", "music", "soundEffect", "image"];

/** Service noun per kind: VideoService/GenerateVideo, SoundEffectService/GetSoundEffectJob, ... */
const NOUNS: Record<MediaKind, "Video" | "Speech" | "Music" | "SoundEffect" | "Image"> = {
  video: "Video",
  speech: "Speech",
  music: "Music",
  soundEffect: "SoundEffect",
  image: "Image",
};

const ENDED_STATES: ReadonlySet<string> = new Set(["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"]);

/** Whether a job has ended. Unknown (newer) states count as "not ended yet". */
export function isEnded(state: JobState | string | number): boolean {
  return ENDED_STATES.has(String(state));
}

/** A plain JSON object as a google.protobuf.Struct (for `providerOptions`). */
export function toStruct(object: Record<string, unknown>): Struct {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

function toValue(value: unknown): Value {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === "object") return { structValue: toStruct(value as Record<string, unknown>) };
  throw new TypeError(`cannot put a ${typeof value} into a google.protobuf.Struct`);
}

// --- errors -----------------------------------------------------------------

export interface FieldViolation {
  field: string;
  description: string;
  reason: string;
}

/**
 * An RPC error with its google.rpc details decoded. Match on `reason` (stable,
 * UPPER_SNAKE), never on `message`.
 */
export class MediagenError extends Error {
  override readonly name = "MediagenError";
  constructor(
    message: string,
    /** Canonical gRPC status code, e.g. grpc.status.INVALID_ARGUMENT. */
    readonly code: grpc.status,
    /** ErrorInfo.reason, e.g. "PROVIDER_RATE_LIMITED"; "" when the server sent none. */
    readonly reason: string = "",
    readonly domain: string = "",
    readonly metadata: Record<string, string> = {},
    /** BadRequest field violations, naming the offending request fields. */
    readonly fieldViolations: FieldViolation[] = [],
    /** RetryInfo: how long the server (or the vendor behind it) asks us to wait. */
    readonly retryDelayMs: number | undefined = undefined,
  ) {
    super(message);
  }

  /** "INVALID_ARGUMENT", "NOT_FOUND", ... */
  get codeName(): string {
    return grpc.status[this.code] ?? String(this.code);
  }
}

/** A download whose bytes do not match the artifact's size or sha256. */
export class IntegrityError extends Error {
  override readonly name = "IntegrityError";
}

// The few google/rpc/error_details.proto messages we decode (wire-compatible copies).
const DETAILS = protobuf.parse(
  `syntax = "proto3";
  package details;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
  message FieldViolation { string field = 1; string description = 2; string reason = 3; }
  message BadRequest { repeated FieldViolation field_violations = 1; }
  message Duration { int64 seconds = 1; int32 nanos = 2; }
  message RetryInfo { Duration retry_delay = 1; }`,
  { keepCase: true },
).root;
const DECODE_AS = { longs: Number, defaults: true, arrays: true, objects: true } as const;

function decodeDetail(typeName: string, value: Uint8Array): Record<string, any> {
  return DETAILS.lookupType(`details.${typeName}`).toObject(
    DETAILS.lookupType(`details.${typeName}`).decode(value),
    DECODE_AS,
  );
}

/** Build a MediagenError from a google.rpc.Status (an RPC's, or a failed Job's `error`). */
export function errorFromStatus(status: {
  code: number;
  message: string;
  details: { type_url?: string; typeUrl?: string; value: Uint8Array }[];
}): MediagenError {
  let reason = "";
  let domain = "";
  let metadata: Record<string, string> = {};
  let violations: FieldViolation[] = [];
  let retryDelayMs: number | undefined;
  for (const detail of status.details) {
    const type = (detail.type_url ?? detail.typeUrl ?? "").split("/").pop();
    if (type === "google.rpc.ErrorInfo") {
      const info = decodeDetail("ErrorInfo", detail.value);
      ({ reason, domain, metadata } = info as { reason: string; domain: string; metadata: Record<string, string> });
    } else if (type === "google.rpc.BadRequest") {
      violations = (decodeDetail("BadRequest", detail.value).field_violations as FieldViolation[]).map((v) => ({
        field: v.field,
        description: v.description,
        reason: v.reason,
      }));
    } else if (type === "google.rpc.RetryInfo") {
      const delay = decodeDetail("RetryInfo", detail.value).retry_delay as { seconds: number; nanos: number } | null;
      if (delay) retryDelayMs = delay.seconds * 1000 + delay.nanos / 1e6;
    }
  }
  return new MediagenError(status.message, status.code, reason, domain, metadata, violations, retryDelayMs);
}

/** The error of a FAILED or CANCELLED job, or undefined. */
export function jobError(job: Job): MediagenError | undefined {
  const status: Status__Output | null = job.error;
  if (!status || (status.code === 0 && !status.details.length)) return undefined;
  return errorFromStatus({
    code: status.code,
    message: status.message,
    details: status.details.map((d) => ({ typeUrl: d.type_url, value: d.value })),
  });
}

function toMediagenError(err: unknown): Error {
  const e = err as grpc.ServiceError;
  if (e == null || typeof e.code !== "number" || e.metadata === undefined) return err as Error;
  const raw = e.metadata.get("grpc-status-details-bin")[0];
  if (raw instanceof Buffer) {
    const status = decodeDetail("Status", raw) as {
      code: number;
      message: string;
      details: { type_url: string; value: Uint8Array }[];
    };
    return errorFromStatus(status);
  }
  return new MediagenError(e.details || e.message, e.code);
}

// --- the client -------------------------------------------------------------

export interface ClientOptions {
  /** Default: insecure (plaintext), as `make run` serves. */
  credentials?: grpc.ChannelCredentials;
  /** Bearer token, sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Deadline of unary calls, in ms (default 30 s). Streams take theirs per call. */
  deadlineMs?: number;
  /** Folder holding mediagen/v1/*.proto (default: the repository's protos/). */
  protoDir?: string;
  /** Folder holding google/rpc/status.proto (default: third_party/googleapis). */
  googleapisDir?: string;
  channelOptions?: grpc.ChannelOptions;
}

export interface WatchOptions {
  /** Resume after this sequence number (0 or unset: from the first event). */
  afterSequence?: number | string;
  /** Also yield heartbeats (by default they are swallowed). */
  heartbeats?: boolean;
  /**
   * Reconnections after the stream breaks with UNAVAILABLE; each resumes after
   * the last sequence seen, so no event is missed or repeated. Default 5.
   */
  maxReconnects?: number;
  signal?: AbortSignal;
}

export interface DownloadOptions {
  artifactIndex?: number;
  /** Overall deadline of the download, in ms (default: none). */
  deadlineMs?: number;
}

export interface DownloadToFileOptions extends DownloadOptions {
  /** Continue from `<file>.part` when an earlier download was cut short (default true). */
  resume?: boolean;
}

export interface UploadOptions {
  /** MIME type, e.g. "image/png". Default: the server detects it (and refuses a wrong one). */
  contentType?: string;
  /** Deadline of the whole upload, in ms. Default: `deadlineMs` plus 1 s per 256 KiB. */
  deadlineMs?: number;
  /** Called after each chunk with the bytes sent so far and the file's size. */
  onProgress?: (sent: number, total: number) => void;
}

export interface DownloadedFile {
  artifact: Artifact;
  path: string;
  sizeBytes: number;
  sha256: string;
}

interface DownloadChunk {
  offset: string;
  data: Buffer;
  artifact: Artifact | null;
}

type Proto = AssetProto & CatalogProto & VideoProto & SpeechProto & MusicProto & SoundEffectProto & ImageProto;
type AnyClient = grpc.Client & Record<string, any>;

const REPO_ROOT = path.resolve(__dirname, "..", "..", "..", "..");

/** Load the contract with @grpc/proto-loader (all of protoDir/mediagen/v1/*.proto). */
export function loadContract(protoDir?: string, googleapisDir?: string): Proto {
  const protos = protoDir ?? path.join(REPO_ROOT, "protos");
  const googleapis = googleapisDir ?? path.join(REPO_ROOT, "third_party", "googleapis");
  const files = readdirSync(path.join(protos, "mediagen", "v1"))
    .filter((f) => f.endsWith(".proto"))
    .sort()
    .map((f) => `mediagen/v1/${f}`);
  const definition = protoLoader.loadSync(files, {
    includeDirs: [protos, googleapis],
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition) as unknown as Proto;
}

export class MediagenClient {
  readonly address: string;
  private readonly channel: grpc.Channel;
  private readonly services: Record<MediaKind, AnyClient>;
  private readonly catalog: AnyClient;
  private readonly assets: AnyClient;
  private readonly token: string | undefined;
  private readonly deadlineMs: number;

  constructor(address: string, options: ClientOptions = {}) {
    this.address = address;
    this.token = options.token;
    this.deadlineMs = options.deadlineMs ?? 30_000;
    const proto = loadContract(options.protoDir, options.googleapisDir).mediagen.v1;
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    this.channel = new grpc.Channel(address, credentials, options.channelOptions ?? {});
    const shared = { channelOverride: this.channel };
    this.services = {
      video: new proto.VideoService(address, credentials, shared) as AnyClient,
      speech: new proto.SpeechService(address, credentials, shared) as AnyClient,
      music: new proto.MusicService(address, credentials, shared) as AnyClient,
      soundEffect: new proto.SoundEffectService(address, credentials, shared) as AnyClient,
      image: new proto.ImageService(address, credentials, shared) as AnyClient,
    };
    this.catalog = new proto.CatalogService(address, credentials, shared) as AnyClient;
    this.assets = new proto.AssetService(address, credentials, shared) as AnyClient;
  }

  close(): void {
    this.channel.close();
  }

  /** Start a job; resolves at once with it (QUEUED). A request_id (UUID) is added when missing. */
  async generate<K extends MediaKind>(kind: K, request: GenerateRequests[K]): Promise<Job> {
    const withId = { ...request, requestId: request.requestId || randomUUID() };
    const response = await this.unary<{ job: Job }>(this.services[kind], `Generate${NOUNS[kind]}`, withId);
    return response.job;
  }

  async getJob(kind: MediaKind, jobId: string, options: { downloadUrlTtlSeconds?: number } = {}): Promise<Job> {
    const request: Record<string, unknown> = { jobId };
    if (options.downloadUrlTtlSeconds) request.downloadUrlTtl = { seconds: options.downloadUrlTtlSeconds };
    return (await this.unary<{ job: Job }>(this.services[kind], `Get${NOUNS[kind]}Job`, request)).job;
  }

  async listJobs(
    kind: MediaKind,
    options: { pageSize?: number; pageToken?: string; state?: JobState } = {},
  ): Promise<{ jobs: Job[]; nextPageToken: string }> {
    return this.unary(this.services[kind], `List${NOUNS[kind]}Jobs`, options);
  }

  /** Cancel a job that has not ended; resolves with the job as it is afterwards. */
  async cancel(kind: MediaKind, jobId: string): Promise<Job> {
    return (await this.unary<{ job: Job }>(this.services[kind], `Cancel${NOUNS[kind]}Job`, { jobId })).job;
  }

  async listProviders(mediaType: MediaType = "MEDIA_TYPE_UNSPECIFIED"): Promise<Provider[]> {
    return (await this.unary<{ providers: Provider[] }>(this.catalog, "ListProviders", { mediaType })).providers;
  }

  /**
   * Upload a local file as an asset (AssetService.UploadAsset), streamed from
   * disk in 1 MiB chunks (never whole in memory): metadata first (name, size),
   * then the bytes. The server refuses an upload as soon as it passes a limit
   * (size, type, pixels). The stored asset's size and sha256 are checked
   * against what was read; a mismatch deletes the asset and throws
   * IntegrityError. Use it as `inputImage: { assetId: asset.id }`.
   */
  async upload(file: string, options: UploadOptions = {}): Promise<Asset> {
    const size = (await stat(file)).size;
    const deadline = Date.now() + (options.deadlineMs ?? this.deadlineMs + (size / UPLOAD_MIN_RATE) * 1000);
    const hash = createHash("sha256");
    let sent = 0;
    let finished = false;
    let call!: grpc.ClientWritableStream<Record<string, unknown>>;
    const answer = new Promise<Asset>((resolve, reject) => {
      call = this.assets.UploadAsset(this.metadata(), { deadline }, (err: grpc.ServiceError | null, response: { asset: Asset }) => {
        finished = true;
        if (err) reject(toMediagenError(err));
        else resolve(response.asset);
      });
    });
    answer.catch(() => {}); // observed below; a refusal may come while the file is still being read
    // A refusal is announced at once in this header; the status follows when we stop writing.
    let refused = false;
    call.on("metadata", (headers: grpc.Metadata) => {
      if (headers.get(REFUSED_HEADER).length) refused = true;
    });
    const input = createReadStream(file, { highWaterMark: UPLOAD_CHUNK_SIZE });
    try {
      call.write({ metadata: { filename: path.basename(file), sizeBytes: String(size), contentType: options.contentType ?? "" } });
      for await (const block of input) {
        if (finished || refused) break; // refused: stop reading, half-close, read the status
        const chunk = block as Buffer;
        hash.update(chunk);
        sent += chunk.length;
        if (!call.write({ chunk })) await Promise.race([once(call, "drain"), answer.then(() => {}, () => {})]);
        options.onProgress?.(sent, size);
      }
      if (!finished) call.end();
    } finally {
      input.destroy();
    }
    const asset = await answer;
    const sha256 = hash.digest("hex");
    if (Number(asset.sizeBytes) !== sent || asset.sha256 !== sha256) {
      await this.deleteAsset(asset.id).catch(() => {});
      throw new IntegrityError(
        `the server stored ${asset.sizeBytes} bytes with sha256 ${asset.sha256}; ${sent} bytes with sha256 ${sha256} were sent`,
      );
    }
    return asset;
  }

  async getAsset(assetId: string): Promise<Asset> {
    return (await this.unary<{ asset: Asset }>(this.assets, "GetAsset", { assetId })).asset;
  }

  async deleteAsset(assetId: string): Promise<void> {
    await this.unary(this.assets, "DeleteAsset", { assetId });
  }

  /**
   * The job's events until it ends (the last one has type JOB_EVENT_TYPE_ENDED).
   * Breaking out of the loop cancels the stream.
   */
  async *watch(kind: MediaKind, jobId: string, options: WatchOptions = {}): AsyncGenerator<JobEvent> {
    let last = String(options.afterSequence ?? "0");
    let reconnects = 0;
    const maxReconnects = options.maxReconnects ?? 5;
    for (;;) {
      const call: grpc.ClientReadableStream<{ event: JobEvent }> = this.services[kind][`Watch${NOUNS[kind]}Job`](
        { jobId, afterSequence: last },
        this.metadata(),
        {},
      );
      const abort = () => call.cancel();
      options.signal?.addEventListener("abort", abort, { once: true });
      try {
        for await (const message of call) {
          const event = (message as { event: JobEvent }).event;
          reconnects = 0;
          if (event.type === "JOB_EVENT_TYPE_HEARTBEAT") {
            if (options.heartbeats) yield event;
            continue;
          }
          last = event.sequence;
          yield event;
          if (event.type === "JOB_EVENT_TYPE_ENDED") return;
        }
        return; // the server ended the stream: the caller has seen the end already
      } catch (err) {
        const e = toMediagenError(err);
        const retry = e instanceof MediagenError && e.code === grpc.status.UNAVAILABLE && !options.signal?.aborted;
        if (!retry || reconnects >= maxReconnects) throw e;
        reconnects += 1;
        await sleep(Math.min(200 * 2 ** reconnects, 5_000));
      } finally {
        options.signal?.removeEventListener("abort", abort);
        call.on("error", () => {}); // a cancelled call reports CANCELLED: not an error here
        call.cancel();
      }
    }
  }

  /** Download an artifact into memory, checking its size and sha256. */
  async download(kind: MediaKind, jobId: string, options: DownloadOptions = {}): Promise<{ artifact: Artifact; data: Buffer }> {
    const hash = createHash("sha256");
    const parts: Buffer[] = [];
    let artifact: Artifact | undefined;
    let size = 0;
    for await (const chunk of this.chunks(kind, jobId, 0, options)) {
      artifact ??= chunk.artifact ?? undefined;
      hash.update(chunk.data);
      parts.push(chunk.data);
      size += chunk.data.length;
    }
    if (!artifact) throw new IntegrityError(`download of ${jobId} sent no artifact`);
    verify(artifact, size, hash.digest("hex"));
    return { artifact, data: Buffer.concat(parts) };
  }

  /**
   * Download an artifact into `file`, streamed (never whole in memory), through
   * `<file>.part` renamed into place once its sha256 matches. A `.part` left by
   * a broken download is continued from its size.
   */
  async downloadToFile(
    kind: MediaKind,
    jobId: string,
    file: string,
    options: DownloadToFileOptions = {},
  ): Promise<DownloadedFile> {
    const part = `${file}.part`;
    const hash = createHash("sha256");
    let offset = 0;
    if (options.resume !== false && existsSync(part)) {
      offset = (await stat(part)).size;
      for await (const block of createReadStream(part)) hash.update(block as Buffer);
    }
    const out = createWriteStream(part, { flags: offset ? "a" : "w" });
    let artifact: Artifact | undefined;
    let size = offset;
    try {
      for await (const chunk of this.chunks(kind, jobId, offset, options)) {
        artifact ??= chunk.artifact ?? undefined;
        hash.update(chunk.data);
        size += chunk.data.length;
        if (!out.write(chunk.data)) await once(out, "drain");
      }
    } finally {
      out.end();
      await once(out, "close");
    }
    if (!artifact) throw new IntegrityError(`download of ${jobId} sent no artifact`);
    const sha256 = hash.digest("hex");
    try {
      verify(artifact, size, sha256);
    } catch (err) {
      await rm(part, { force: true }); // a mismatch cannot be resumed: start over next time
      throw err;
    }
    await rename(part, file);
    return { artifact, path: file, sizeBytes: size, sha256 };
  }

  private async *chunks(
    kind: MediaKind,
    jobId: string,
    offset: number,
    options: DownloadOptions,
  ): AsyncGenerator<DownloadChunk> {
    const callOptions: grpc.CallOptions = options.deadlineMs ? { deadline: Date.now() + options.deadlineMs } : {};
    const call: grpc.ClientReadableStream<DownloadChunk> = this.services[kind][`Download${NOUNS[kind]}`](
      { jobId, artifactIndex: options.artifactIndex ?? 0, offset: String(offset) },
      this.metadata(),
      callOptions,
    );
    let expected = offset;
    try {
      for await (const message of call) {
        const chunk = message as DownloadChunk;
        if (Number(chunk.offset) !== expected) {
          throw new IntegrityError(`chunk at offset ${chunk.offset}, expected ${expected}`);
        }
        expected += chunk.data.length;
        yield chunk;
      }
    } catch (err) {
      throw toMediagenError(err);
    } finally {
      call.on("error", () => {});
      call.cancel();
    }
  }

  private metadata(): grpc.Metadata {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    return metadata;
  }

  private unary<T>(client: AnyClient, method: string, request: unknown): Promise<T> {
    return new Promise((resolve, reject) => {
      client[method](
        request,
        this.metadata(),
        { deadline: Date.now() + this.deadlineMs },
        (err: grpc.ServiceError | null, response: T) => (err ? reject(toMediagenError(err)) : resolve(response)),
      );
    });
  }
}

function verify(artifact: Artifact, size: number, sha256: string): void {
  if (size !== Number(artifact.sizeBytes)) {
    throw new IntegrityError(`got ${size} bytes, the artifact has ${artifact.sizeBytes}`);
  }
  if (sha256 !== artifact.sha256) {
    throw new IntegrityError(`sha256 ${sha256} does not match the artifact's ${artifact.sha256}`);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
