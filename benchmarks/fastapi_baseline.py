"""The hand-written baseline for benchmarks/serving.py: what a team would write without medgate, a FastAPI
endpoint that serves the same network one image per request (no batching, no guards).

`POST /predict`, multipart field `image` (a `.npy` file) → `{"label", "probabilities"}`; `GET /readyz`.
Served from this folder with `uvicorn fastapi_baseline:app --workers N`, each worker loading the model
folder named by MEDGATE_BASELINE_MODEL with MEDGATE_BASELINE_THREADS intra-op threads (serving.py runs one
worker per CPU, with the Bento's intra-op threads). The endpoint is a plain
`def`, so FastAPI runs it in its thread pool, as its documentation advises for blocking work; it uses the
training preprocessing so that both servers do the same work per image.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, File, UploadFile

from components.ml.models import load_model
from components.ml.transforms import preprocess

MODEL_ENV = "MEDGATE_BASELINE_MODEL"
THREADS_ENV = "MEDGATE_BASELINE_THREADS"

if int(os.environ.get(THREADS_ENV, "0")) > 0:
    torch.set_num_threads(int(os.environ[THREADS_ENV]))
network, spec = load_model(Path(os.environ[MODEL_ENV]))
network.eval()
app = FastAPI()


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict")
def predict(image: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
    array = np.load(io.BytesIO(image.file.read()), allow_pickle=False)
    x = torch.from_numpy(preprocess(array, spec.preprocessing)[np.newaxis])
    with torch.inference_mode():
        probabilities = torch.softmax(network(x).float(), dim=1)[0].tolist()
    best = int(np.argmax(probabilities))
    return {"label": spec.class_names[best], "probabilities": dict(zip(spec.class_names, probabilities, strict=True))}
