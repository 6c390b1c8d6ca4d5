"""The service's configuration: one typed model, loaded from one file.

This is the only module that reads environment variables:
``MARKETGUARD_CONFIG`` (path of a YAML or JSON config file) and
``MARKETGUARD_DATA_DIR`` (overrides ``data_dir``) and ``MARKETGUARD_API_KEYS``
(``tenant:key`` pairs, added to ``service.api_keys``). Command-line flags override them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from indexes.config import IndexesConfig
from signals.config import ContentRulesConfig, SignalsConfig
from signals.errors import InvalidInput, field_path

ENV_CONFIG = "MARKETGUARD_CONFIG"
ENV_STORE_URL = "MARKETGUARD_STORE_URL"
ENV_DATA_DIR = "MARKETGUARD_DATA_DIR"
ENV_API_KEYS = "MARKETGUARD_API_KEYS"


class BatchConfig(BaseModel):
    """The batch Ray job over a catalogue (``marketguard batch``, ``serving/batch/job.py``)."""

    model_config = ConfigDict(extra="forbid")

    unit_bytes: int = Field(default=4 << 20, ge=1024, description="JSONL/CSV bytes per checkpointed unit")
    unit_rows: int = Field(default=5000, ge=1, description="Parquet rows per checkpointed unit")
    batch_size: int = Field(default=64, ge=1, le=4096, description="records per extractor call")
    actors: int | None = Field(default=None, ge=1, le=10_000,
                               description="extractor actors; default: as many of actor_cpus as "
                                           "the cluster's free CPUs hold (at least one), never more "
                                           "than units (then each takes a share, at most a node's)")
    actor_cpus: float = Field(default=1.0, gt=0, le=64, description="logical CPUs reserved per actor")
    actor_threads: int | None = Field(default=None, ge=1, le=256,
                                      description="intra-op threads of each actor's models (text "
                                                  "embedding, SSCD, OCR, NSFW); default: the CPUs "
                                                  "the actor reserves, rounded, at least 1")
    query_block: int = Field(default=2048, ge=1, description="queries per block of the all-pairs search")
    top: int = Field(default=10, ge=1, le=1000, description="clusters and sellers listed in the summary")
    pairs_on: Literal["cluster", "driver"] = Field(
        default="cluster", description="where the all-pairs search, clustering and outputs run: Ray tasks "
                                       "on the cluster's nodes, or the driver alone (the reference path; "
                                       "the same bytes)")
    task_cpus: float = Field(default=1.0, gt=0, le=64,
                             description="logical CPUs reserved per pair, clustering and output task")
    partitions: int | None = Field(default=None, ge=1, le=4096,
                                   description="row ranges (and cluster buckets) the pairs are shuffled "
                                               "into with pairs_on: cluster; default: one per 50k records "
                                               "but two per task slot, at most 256, ranges of >= 1,000 "
                                               "records (kept for a resumed run)")


class ApiKey(BaseModel):
    """An API key and the tenant it acts for. Give ``key`` (kept in memory) or its SHA-256."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$")
    key: str | None = Field(default=None, min_length=16, description="the secret itself (>= 16 chars)")
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class RateLimitConfig(BaseModel):
    """Per tenant, per ingress replica (a token bucket in each replica's memory)."""

    model_config = ConfigDict(extra="forbid")

    requests_per_second: float = Field(default=200.0, gt=0)
    burst: int = Field(default=400, ge=1)


class IngressDeploymentConfig(BaseModel):
    """The HTTP ingress: validation, auth, limits and the fast extractors (in-process, batched)."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(default=1, ge=1, le=1024)
    num_cpus: float = Field(default=0.5, gt=0, le=64, description="logical CPUs reserved per replica")
    max_ongoing_requests: int = Field(default=64, ge=1, description="requests a replica works on at once")
    max_in_flight: int = Field(default=64, ge=1, description="past this many requests a replica answers 503")
    batch_max_size: int = Field(default=16, ge=1, le=256,
                                description="records per extractor call (@serve.batch)")
    batch_wait_s: float = Field(default=0.002, ge=0, le=1, description="wait to fill an extractor batch")


class CatalogueDeploymentConfig(BaseModel):
    """The index and store owner: one writer per shard; tenants spread over shards by hash."""

    model_config = ConfigDict(extra="forbid")

    shards: int = Field(default=1, ge=1, le=4096, description="catalogue deployments; a tenant lives on one")
    num_cpus: float = Field(default=0.5, gt=0, le=64)
    max_ongoing_requests: int = Field(default=256, ge=1)
    compact_interval_s: float = Field(default=300.0, gt=0,
                                      description="index snapshots, off the request path")


class IndexShardsDeploymentConfig(BaseModel):
    """Index shards inside large tenants: a listed tenant's indexes split over ``count`` deployments
    by a hash of the item id. Its catalogue shard stays the one writer and decider and fans each
    search out to every index shard (one extra hop, run in parallel)."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=1, ge=1, le=4096,
                       description="index-shard deployments; 1: off (each catalogue shard holds its tenants' "
                                   "indexes)")
    tenants: list[str] = Field(default_factory=lambda: ["*"],
                               description="tenants split over the index shards ('*': every tenant)")
    num_cpus: float = Field(default=0.25, gt=0, le=64)
    max_ongoing_requests: int = Field(default=256, ge=1)
    compact_interval_s: float = Field(default=300.0, gt=0,
                                      description="index snapshots, off the request path")


class DeepTierConfig(BaseModel):
    """The deep tier (OCR into the content rules, NSFW) after the answer (``serving/scoring/deep.py``).

    It runs when ``enabled`` and an OCR or NSFW extractor is enabled in ``signals.images``.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    num_cpus: float = Field(default=0.25, gt=0, le=64)
    idle_class: bool = Field(default=True, description="run the deep replica in Linux's SCHED_IDLE class "
                                                          "(only on otherwise idle CPU)")
    nice: int = Field(default=10, ge=0, le=19, description="its priority where SCHED_IDLE is not available")
    max_jobs: int = Field(default=1000, ge=1, description="queued jobs; past it deep work is skipped")
    max_bytes: int = Field(default=256 << 20, ge=1 << 20, description="queued image bytes; past it skipped")
    batch: int = Field(default=4, ge=1, le=256, description="jobs a worker takes at once")
    threads: int = Field(default=1, ge=1, le=64,
                         description="OCR and NSFW threads in the deep replica (instead of "
                                     "signals.images.*.threads there): a core is left to the request path")
    lease_s: float = Field(default=300.0, gt=0, description="a taken job is taken again after this")
    poll_s: float = Field(default=0.5, gt=0, le=60, description="idle wait between looks for work")
    yield_s: float = Field(default=0.25, ge=0, le=60,
                           description="deep work starts only when no catalogue shard has had a request "
                                       "for this long (it runs in the gaps; 0: never waits, for a deep "
                                       "tier on cores or a node of its own)")


class ServiceConfig(BaseModel):
    """The HTTP service (``marketguard serve``)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_keys: list[ApiKey] = Field(default_factory=list,
                                   description="with keys the key decides the tenant; without, local mode")
    max_body_bytes: int = Field(default=32 << 20, ge=1024, description="a larger body is a 413")
    max_items: int = Field(default=256, ge=1, le=4096, description="records in one {items: [...]} body")
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    retention_days: float | None = Field(default=None, gt=0,
                                         description="content not written for this long is deleted")
    global_banks: dict[str, list[str]] = Field(
        default_factory=lambda: {"*": ["*"]},
        description="tenant -> global banks it matches against ('*': every tenant / every bank)")
    ray_num_cpus: int | None = Field(default=None, ge=1, description="CPUs of the local Ray (default: all)")
    ingress: IngressDeploymentConfig = Field(default_factory=IngressDeploymentConfig)
    catalogue: CatalogueDeploymentConfig = Field(default_factory=CatalogueDeploymentConfig)
    index_shards: IndexShardsDeploymentConfig = Field(default_factory=IndexShardsDeploymentConfig)
    deep: DeepTierConfig = Field(default_factory=DeepTierConfig)


class RedisSinkConfig(BaseModel):
    """Redis: a stream per tenant and a hash per entity (``serving/sinks/redis_sink.py``)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="redis://host:port/db (rediss:// for TLS)")
    key_prefix: str = Field(default="marketguard", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    stream_maxlen: int = Field(default=1_000_000, ge=1,
                               description="approximate bound of each tenant's stream")
    timeout_s: float = Field(default=5.0, gt=0, le=300)
    redact: Literal["none", "mask", "hash"] = Field(
        default="none", description="contact values in evidence: as found, masked, or a keyed hash")
    redact_key: str | None = Field(default=None, description="the HMAC key of redact: hash")
    shadow: bool = Field(default=False, description="also receive shadow (candidate) signals")

    @model_validator(mode="after")
    def _hash_needs_key(self) -> RedisSinkConfig:
        if self.redact == "hash" and not self.redact_key:
            raise ValueError("redact: hash needs a redact_key")
        return self


class WebhookSinkConfig(BaseModel):
    """A signed webhook: JSON batches of events POSTed to ``url`` (``serving/sinks/webhook.py``)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", description="events go only to the URLs named here")
    secrets: list[str] = Field(min_length=1, description="HMAC keys; one v1= signature each (rotation)")
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    redact: Literal["none", "mask", "hash"] = Field(
        default="mask", description="contact values in evidence: as found, masked (default: a webhook "
                                    "may leave the building), or a keyed hash")
    redact_key: str | None = Field(default=None, description="the HMAC key of redact: hash")
    shadow: bool = Field(default=False, description="also receive shadow (candidate) signals; a decision "
                                                    "sink does not")

    @model_validator(mode="after")
    def _hash_needs_key(self) -> WebhookSinkConfig:
        if self.redact == "hash" and not self.redact_key:
            raise ValueError("redact: hash needs a redact_key")
        return self


class SinksConfig(BaseModel):
    """Where signals are published: every signal the store accepts is queued for each sink in the
    same transaction (the outbox) and delivered at least once, in order per sink."""

    model_config = ConfigDict(extra="forbid")

    redis: RedisSinkConfig | None = None
    webhooks: list[WebhookSinkConfig] = Field(default_factory=list)
    batch_size: int = Field(default=256, ge=1, le=10_000, description="events per delivery")
    poll_interval_s: float = Field(
        default=0.05, gt=0, le=60,
        description="an idle sink looks again after this (a commit in this process wakes it at once)")
    max_backoff_s: float = Field(default=30.0, gt=0, description="a failing sink waits at most this long")
    dead_letter_after_s: float = Field(
        default=86_400.0, gt=0,
        description="a sink failing for longer than this has its events older than this dead-lettered")

    @model_validator(mode="after")
    def _one_sink_per_url(self) -> SinksConfig:
        urls = [w.url for w in self.webhooks]
        if len(set(urls)) != len(urls):
            raise ValueError("sinks.webhooks: each URL once (its events would be split between the entries)")
        return self


class StoreConfig(BaseModel):
    """Where the service keeps items, signals, labels and the outbox (``serving/store/``)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["sqlite", "postgres"] = Field(
        default="sqlite", description="sqlite: a file per catalogue shard in the data dir; postgres: a "
                                      "shared server, a schema per catalogue shard (replicas on any node)")
    url: str | None = Field(default=None, pattern=r"^postgres(ql)?://",
                            description="postgresql://user@host:port/db (or $MARKETGUARD_STORE_URL, for a "
                                        "password kept out of the file)")
    pg_schema: str = Field(default="marketguard", pattern=r"^[a-z_][a-z0-9_]{0,40}$",
                           description="the schema (with several catalogue shards: <pg_schema>_shard_<i>)")

    @model_validator(mode="after")
    def _postgres_needs_url(self) -> StoreConfig:
        if self.backend == "postgres" and not self.url:
            raise ValueError("store.backend postgres needs store.url (or MARKETGUARD_STORE_URL)")
        return self


class ShadowConfig(BaseModel):
    """A candidate run beside the live one: its signals are stored under the same names with their own
    ``source`` (``<extractor>_<label>@<version>``) and ``"shadow": true``, published only to the sinks
    that take shadow signals, and never returned to the caller of ``POST /v1/...``. Compare the two
    with the labels before turning the candidate on."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(default="candidate", pattern=r"^[a-z0-9_]{1,32}$",
                       description="joins the extractor's name in the candidate's source")
    content_rules: ContentRulesConfig | None = Field(
        default=None, description="a candidate content-rules config (terms, domains, regions, ...)")
    thresholds: dict[str, Any] | None = Field(
        default=None, description="candidate match thresholds, over the live `indexes.thresholds` "
                                  "(only the keys given change), e.g. {image_sscd: 0.8}")
    near_duplicates: dict[str, Any] | None = Field(
        default=None, description="candidate near-duplicate settings, over the live "
                                  "`indexes.near_duplicates` (only the keys given change)")

    def candidate_indexes(self, live: IndexesConfig) -> IndexesConfig | None:
        """The live index settings with the candidate's thresholds / near-duplicate settings laid
        over them; None when no near-duplicate candidate is configured."""
        if self.thresholds is None and self.near_duplicates is None:
            return None
        return live.model_validate({
            **live.model_dump(),
            "thresholds": {**live.thresholds.model_dump(), **(self.thresholds or {})},
            "near_duplicates": {**live.near_duplicates.model_dump(), **(self.near_duplicates or {})},
        })


class LabelsConfig(BaseModel):
    """Outcome labels (``POST /v1/labels``, ``marketguard labels import``)."""

    model_config = ConfigDict(extra="forbid")

    auto_bank: bool = Field(default=False,
                            description="a fraud label on a listing or review adds its stored content to the "
                                        "tenant's fraud bank, a legit one to the benign bank (through the "
                                        "service only)")
    fraud_bank: str = Field(default="confirmed-fraud", pattern=r"^[a-z0-9][a-z0-9_\-]{0,47}$",
                            description="bank name prefix: <name>-listings, <name>-reviews")
    benign_bank: str = Field(default="confirmed-legit", pattern=r"^[a-z0-9][a-z0-9_\-]{0,47}$")

    def banks(self) -> tuple[str, str] | None:
        """(fraud bank prefix, benign bank prefix) when labels feed the banks, else None."""
        return (self.fraud_bank, self.benign_bank) if self.auto_bank else None


class ReportConfig(BaseModel):
    """``marketguard report``."""

    model_config = ConfigDict(extra="forbid")

    target_precision: float = Field(default=0.9, gt=0, le=1,
                                    description="each signal's operating threshold is the lowest reaching it")


class MarketGuardConfig(BaseModel):
    """Everything a MarketGuard process needs to know, with embedded defaults."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(
        default=Path("./var"),
        description="signal store, index snapshots, cached models and logs live here",
    )
    signals: SignalsConfig = Field(default_factory=SignalsConfig)
    indexes: IndexesConfig = Field(default_factory=IndexesConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    sinks: SinksConfig = Field(default_factory=SinksConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _shadow_candidate_is_valid(self) -> MarketGuardConfig:
        self.shadow.candidate_indexes(self.indexes)  # a bad key or value fails here, at load time
        return self


def load_config(
    path: Path | None = None,
    *,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> MarketGuardConfig:
    """Load the config: file (``path`` or ``$MARKETGUARD_CONFIG``), then env, then flags.

    Raises :class:`InvalidInput` naming the bad setting (``signals.text_embedding.threads``).
    """
    env = os.environ if env is None else env
    if path is None and env.get(ENV_CONFIG):
        path = Path(env[ENV_CONFIG])
    raw: dict[str, Any] = _read_file(path) if path is not None else {}
    if env.get(ENV_DATA_DIR):
        raw["data_dir"] = env[ENV_DATA_DIR]
    if data_dir is not None:
        raw["data_dir"] = str(data_dir)
    if env.get(ENV_STORE_URL):
        raw["store"] = {**(raw.get("store") or {}), "url": env[ENV_STORE_URL]}
    if env.get(ENV_API_KEYS):
        # "tenant:key,tenant2:key2": keys from a secret store, never in the config file.
        service = dict(raw.get("service") or {})
        keys = list(service.get("api_keys") or [])
        for part in env[ENV_API_KEYS].split(","):
            tenant, sep, key = part.strip().partition(":")
            if not sep:
                raise InvalidInput(ENV_API_KEYS, "must be tenant:key pairs separated by commas")
            keys.append({"tenant": tenant, "key": key})
        service["api_keys"] = keys
        raw["service"] = service
    try:
        return MarketGuardConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = field_path(tuple(first["loc"]))
        msg = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidInput(f"config.{where}" if where else "config", msg) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput("config", f"config file {str(path)!r} does not exist", "not_found") from None
    except OSError as exc:
        raise InvalidInput("config", f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        fmt = "JSON" if path.suffix == ".json" else "YAML"
        raise InvalidInput("config", f"{path} is not valid {fmt}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidInput("config", f"{path} must hold a mapping of settings")
    return data


def configure_process(config: MarketGuardConfig) -> None:
    """Set the process-wide knobs (FAISS threads, OpenMP wait policy) once, at start-up of a
    process that serves (the CLI, every Serve replica, every batch actor)."""
    from indexes.runtime import configure_process as configure

    configure(faiss_threads=config.indexes.vector.threads,
              omp_wait_policy=None if config.signals.text_embedding.spin_wait else "passive")
