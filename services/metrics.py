"""The service's own Prometheus metrics, beside BentoML's on `/metrics`.

In a module of their own, created once per process: `services.service` is imported again (reloaded) where
tests change its settings, and a metric registered twice is an error.
"""

from __future__ import annotations

import bentoml

# How full the forward passes are (services.batching): a mean near 1 under load means requests do not share them.
BATCH_SIZES = bentoml.metrics.Histogram(
    name="medgate_batch_size",
    documentation="Images per forward pass of the service's batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
