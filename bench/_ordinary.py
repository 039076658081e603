"""The comparison service for bench/serve.py: an ordinary FastAPI endpoint.

Issue 4 measures radlens against "an ordinary FastAPI endpoint that calls the model once per
request". This is that endpoint, written the way the FastAPI docs suggest for blocking work:
a plain ``def`` route (FastAPI runs it in its worker-thread pool), the upload read whole,
preprocessed with the project's own ``models.preprocessing`` (so the decode and resize cost
the same as radlens's), one ``predict_on_batch`` call per request, the scores returned as
JSON. No batching, no database, no de-duplication, no checks beyond what preprocessing
raises, no metrics: everything radlens does on top, this does not.

Not part of the product. Started by bench/serve.py as
``uvicorn bench._ordinary:create_app --factory`` with ``RADLENS_MODEL_STORE`` and
``RADLENS_MODEL`` in the environment.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, File, UploadFile


def create_app() -> FastAPI:
    from radlens.models.preprocessing import preprocess
    from radlens.models.registry import ModelRegistry

    loaded = ModelRegistry(os.environ["RADLENS_MODEL_STORE"]).load(os.environ["RADLENS_MODEL"])
    model, manifest = loaded.model, loaded.manifest
    size = loaded.input_size
    model.predict_on_batch(np.zeros((1, *size, 1), dtype=np.float32))  # warm-up
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/predictions", status_code=201)
    def predict(file: UploadFile = File(...)) -> dict[str, Any]:
        image = preprocess(file.file.read(), size=size, window=manifest.window)
        t0 = time.perf_counter()
        scores = np.asarray(model.predict_on_batch(image.model_input()[np.newaxis]))[0]
        return {
            "scores": dict(zip(manifest.class_names, map(float, scores), strict=True)),
            "inference_ms": (time.perf_counter() - t0) * 1000.0,
            "batch_size": 1,
        }

    return app
