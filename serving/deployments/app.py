"""The typed builder of the application graph: ingress -> catalogue shards, wired at bind time."""

from __future__ import annotations

from typing import cast

from ray.serve import Application, Deployment

from serving.config import MarketGuardConfig
from serving.deployments.catalogue import Catalogue, IndexShard, deep_queue
from serving.deployments.deep import DeepTier
from serving.deployments.ingress import Ingress
from serving.scoring.extraction import FastExtraction

APP_NAME = "marketguard"

# @serve.deployment replaces each class with a Deployment at import time; mypy keeps a decorated
# class's own type, so the casts only restore what the decorator returns.
_CATALOGUE = cast(Deployment, Catalogue)
_INGRESS = cast(Deployment, Ingress)
_INDEX_SHARD = cast(Deployment, IndexShard)
_DEEP = cast(Deployment, DeepTier)


def build_app(config: MarketGuardConfig) -> Application:
    """The Serve application for ``config``: every knob (replicas, CPUs, batching) from config.

    Every deployment declares fractional ``num_cpus`` so the graph fits two cores with room
    for Ray itself; stateless ingress replicas scale by ``service.ingress.num_replicas``,
    catalogue shards (one writer each) by ``service.catalogue.shards``, and the indexes of large
    tenants by ``service.index_shards.count`` (a hash partition each, called by the catalogue shards).
    """
    svc = config.service
    # Model ids stamp the indexes; the registry's constructors are cheap (models load lazily).
    models, dims = FastExtraction.build(config.signals, config.data_dir).models()
    split = svc.index_shards
    index_shards = [
        _INDEX_SHARD.options(name=f"index-shard-{j}", num_replicas=1,
                             max_ongoing_requests=split.max_ongoing_requests,
                             ray_actor_options={"num_cpus": split.num_cpus}).bind(config, models, dims, j)
        for j in range(split.count)
    ] if split.count > 1 else []
    shards = [
        _CATALOGUE.options(name=f"catalogue-{i}" if svc.catalogue.shards > 1 else "catalogue",
                           num_replicas=1, max_ongoing_requests=svc.catalogue.max_ongoing_requests,
                           ray_actor_options={"num_cpus": svc.catalogue.num_cpus}
                           ).bind(config, models, dims, i, svc.catalogue.shards, index_shards)
        for i in range(svc.catalogue.shards)
    ]
    deep = None
    if deep_queue(config) is not None:  # OCR / NSFW after the answer, in a low-priority process
        deep = _DEEP.options(num_replicas=1, ray_actor_options={"num_cpus": svc.deep.num_cpus}
                             ).bind(config, shards)
    ingress = _INGRESS.options(
        num_replicas=svc.ingress.num_replicas, max_ongoing_requests=svc.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": svc.ingress.num_cpus},
        user_config={"batch_max_size": svc.ingress.batch_max_size, "batch_wait_s": svc.ingress.batch_wait_s})
    return ingress.bind(config, shards, deep)
