"""The framework floor for benchmarks/serving.py: a BentoML service with the medgate `/predict` signature
(one multipart file upload, a JSON answer) that does no work, so its cost per request is BentoML's,
uvicorn's and HTTP's alone: BentoML's own handling of the route (a multipart parse into a temporary file
and a pydantic model), which medgate's upload routes skip (services.guard). Served from this folder with
`bentoml serve floor_service:Floor`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType

from services.settings import UNTRACED

Json = Annotated[dict[str, Any], ContentType("application/json")]
WORKERS_ENV = "MEDGATE_FLOOR_WORKERS"


# Untraced as medgate's service is by default: the floor is the least BentoML's own route handling costs.
@bentoml.service(name="medgate_floor", workers=int(os.environ.get(WORKERS_ENV, "1")), traffic={"timeout": 60}, tracing=UNTRACED)
class Floor:
    @bentoml.api
    async def predict(self, image: Path) -> Json:
        """Answers with the upload's size, the medgate answer's shape without a model."""
        size = image.stat().st_size
        return {"label": "none", "probabilities": {"none": 1.0}, "decision": "none", "model_version": f"floor:{size}"}
