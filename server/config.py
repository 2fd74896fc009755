"""Server settings: defaults, then an optional TOML file, then environment variables.

Every setting ``name`` can be set in the TOML file as ``name = ...`` and in the
environment as ``MEDIAGEN_<NAME>`` (upper case). Default providers per media
type are ``[default_providers]`` in TOML or ``MEDIAGEN_DEFAULT_<MEDIA>_PROVIDER``.
The file is named by ``--config`` or ``MEDIAGEN_CONFIG``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDIA_KEYS = ("video", "speech", "music", "sound_effect", "image")


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names it."""


@dataclass
class Settings:
    # Address to serve gRPC on.
    listen: str = "0.0.0.0:50051"
    # Folder for the job database and, with local storage, the artifacts.
    data_dir: str = "data"
    # "local" or "s3".
    storage: str = "local"
    # Root of local storage; default <data_dir>/artifacts.
    storage_root: str = ""
    # S3 (storage = "s3"): bucket, key prefix, endpoint for S3-compatible stores.
    s3_bucket: str = ""
    s3_prefix: str = "mediagen/"
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_path_style: bool = False
    # SQLite job database; default <data_dir>/mediagen.db.
    database: str = ""
    # Shared mode: a PostgreSQL URL (postgresql://user@host:5432/db). Several
    # replicas with the same database_url and S3 bucket serve the same jobs.
    # Empty: the embedded SQLite database (one process).
    database_url: str = ""
    # Connections each replica keeps to PostgreSQL (plus one for LISTEN).
    database_pool_size: int = 10
    # Shared mode: a replica drives a job while it holds the job's lease, renewed
    # every lease_seconds / 3; a dead replica's jobs are taken over after this.
    lease_seconds: float = 15.0
    # This replica's name in leases and logs; default <hostname>-<pid>-<random>.
    replica_id: str = ""
    # Provider per media type when a request names none; unset: the first
    # configured vendor, else the mock.
    default_providers: dict[str, str] = field(default_factory=dict)
    # How a request that names no provider gets one: "default" (the default
    # provider, then provider_order as fallbacks), "preference" (first eligible
    # in provider_order) or "cheapest" (lowest estimate among eligible vendors).
    routing: str = "default"
    # Ordered provider names per media type: preference and fallback order.
    # TOML table [provider_order] video = ["runway", "luma"], or
    # MEDIAGEN_PROVIDER_ORDER_VIDEO="runway,luma".
    provider_order: dict[str, list[str]] = field(default_factory=dict)
    # After a vendor accepted a job and it then failed: "fail" the job, or
    # "resubmit" it to the next provider (one job id, every attempt recorded).
    fallback_after_acceptance: str = "fail"
    # Consecutive vendor failures that open a provider's circuit, and for how long.
    circuit_threshold: int = 5
    circuit_cooldown: float = 30.0
    # Spending limits: "tenant:period:usd,...", tenant "*" for everyone, period day|month.
    budgets: str = ""
    # Webhook signing secrets, "tenant:whsec_<base64>,..." (tenant * for everyone).
    webhook_secrets: str = ""
    # Default webhook per tenant, "tenant=https://...,..." (tenant * for everyone).
    webhook_defaults: str = ""
    # How long a webhook event is retried before it is given up.
    webhook_retry_for: float = 24 * 3600.0
    # Prometheus metrics over HTTP ("host:port"); empty: off.
    metrics_listen: str = "0.0.0.0:9464"
    # Seconds between vendor polls at first, and the most it backs off to.
    poll_interval: float = 2.0
    poll_interval_max: float = 15.0
    # Jobs driven at once; more wait in QUEUED.
    max_concurrent_jobs: int = 1000
    # Per-job limit when a request sets none, and the cap on what it may set.
    job_timeout: float = 1800.0
    max_job_timeout: float = 7200.0
    # Seconds of silence after which Watch sends a heartbeat.
    heartbeat_interval: float = 15.0
    # Total simulated latency of a mock job, and the number of progress steps.
    mock_latency: float = 3.0
    mock_steps: int = 5
    # Largest artifact accepted from a vendor.
    max_output_bytes: int = 2 * 1024**3
    # Largest asset accepted by AssetService.UploadAsset (streamed in chunks of
    # at most 1 MiB, so far above the gRPC message limit).
    max_asset_bytes: int = 64 * 1024 * 1024
    # Longest download URL lifetime GetJob hands out.
    max_download_url_ttl: float = 7 * 24 * 3600.0
    # Allow http:// and private/loopback vendor output URLs (local testing only).
    allow_private_urls: bool = False
    # "auto" (JSON when stderr is not a TTY), "json" or "console".
    log_format: str = "auto"
    log_level: str = "info"
    # Seconds to let streams finish on SIGTERM before closing them.
    shutdown_grace: float = 10.0
    # Largest gRPC message accepted (input images travel inline, up to 16 MiB).
    max_receive_message_bytes: int = 20 * 1024 * 1024
    # Bearer tokens, "tenant:token,tenant:token". Empty: authentication off.
    auth_tokens: str = ""
    # TLS: certificate chain and key (PEM). With tls_client_ca_file, clients
    # must present a certificate signed by that CA (mutual TLS).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Finished jobs and their artifacts are deleted this long after they end; 0 keeps them.
    retention: float = 30 * 24 * 3600.0
    # How often the retention sweep runs.
    retention_sweep_interval: float = 3600.0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def database_path(self) -> Path:
        return Path(self.database) if self.database else Path(self.data_dir) / "mediagen.db"

    @property
    def storage_path(self) -> Path:
        return Path(self.storage_root) if self.storage_root else Path(self.data_dir) / "artifacts"

    def validate(self) -> None:
        if self.storage not in ("local", "s3"):
            raise ConfigError("storage must be 'local' or 's3'")
        if self.storage == "s3" and not self.s3_bucket:
            raise ConfigError("s3_bucket (MEDIAGEN_S3_BUCKET) is required with storage = 's3'")
        if self.database_url:
            if not self.database_url.startswith(("postgresql://", "postgres://")):
                raise ConfigError("database_url must be a postgresql:// URL")
            if self.storage != "s3":
                raise ConfigError(
                    "database_url (shared mode) needs storage = 's3': replicas must see each other's artifacts"
                )
            if self.lease_seconds < 1:
                raise ConfigError("lease_seconds must be at least 1")
            if self.database_pool_size < 2:
                raise ConfigError("database_pool_size must be at least 2")
        for name in ("poll_interval", "poll_interval_max", "job_timeout", "max_job_timeout", "heartbeat_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_concurrent_jobs < 1:
            raise ConfigError("max_concurrent_jobs must be at least 1")
        if self.mock_latency < 0 or self.mock_steps < 1:
            raise ConfigError("mock_latency must be >= 0 and mock_steps >= 1")
        for name in ("default_providers", "provider_order"):
            unknown = set(getattr(self, name)) - set(MEDIA_KEYS)
            if unknown:
                raise ConfigError(f"{name}: unknown media types {sorted(unknown)}")
        if self.routing not in ("default", "preference", "cheapest"):
            raise ConfigError("routing must be default, preference or cheapest")
        if self.fallback_after_acceptance not in ("fail", "resubmit"):
            raise ConfigError("fallback_after_acceptance must be fail or resubmit")
        if self.circuit_threshold < 1 or self.circuit_cooldown <= 0:
            raise ConfigError("circuit_threshold must be >= 1 and circuit_cooldown positive")
        if self.budgets:
            from server.budgets import parse_budgets

            try:
                parse_budgets(self.budgets)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if self.max_asset_bytes < 1:
            raise ConfigError("max_asset_bytes must be positive")
        if self.retention < 0 or self.retention_sweep_interval <= 0:
            raise ConfigError("retention must be >= 0 and retention_sweep_interval positive")
        if self.auth_tokens:
            from server.auth import parse_tokens

            try:
                parse_tokens(self.auth_tokens)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.webhook_secrets or self.webhook_defaults:
            from server.webhooks import parse_secrets

            try:
                parse_secrets(self.webhook_secrets)
                for item in filter(None, (p.strip() for p in self.webhook_defaults.split(","))):
                    if "=" not in item:
                        raise ValueError("webhook_defaults: each entry must be tenant=https://...")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.log_format not in ("auto", "json", "console"):
            raise ConfigError("log_format must be auto, json or console")


def _convert(name: str, raw: Any, kind: Any) -> Any:
    try:
        if kind in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot read {raw!r} as {getattr(kind, '__name__', kind)}") from None


def load_settings(config_file: str | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, the TOML file, the environment, then ``overrides``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or env.get("MEDIAGEN_CONFIG")
    if path:
        try:
            with open(path, "rb") as handle:
                values.update(tomllib.load(handle))
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"config file: unknown settings {sorted(unknown)}")
    defaults = dict(values.get("default_providers") or {})
    for media in MEDIA_KEYS:
        name = env.get(f"MEDIAGEN_DEFAULT_{media.upper()}_PROVIDER")
        if name:
            defaults[media] = name
    values["default_providers"] = defaults
    order = {k: list(v) for k, v in dict(values.get("provider_order") or {}).items()}
    for media in MEDIA_KEYS:
        names = env.get(f"MEDIAGEN_PROVIDER_ORDER_{media.upper()}")
        if names:
            order[media] = [n.strip() for n in names.split(",") if n.strip()]
    values["provider_order"] = order
    for name, spec in fields.items():
        if name in ("default_providers", "provider_order"):
            continue
        env_name = f"MEDIAGEN_{name.upper()}"
        if env_name in env:
            values[name] = env[env_name]
        if name in values:
            values[name] = _convert(name, values[name], spec.type)
    values.update(overrides)
    return Settings(**values)
