"""The naive baseline: an image classifier written the way tutorials write it.

Deliberately unoptimised, and deliberately typical (FastAPI's own ``UploadFile`` example plus the
usual ONNX Runtime tutorial code):

- ``async def`` endpoint with ``UploadFile``; python-multipart spools the upload;
- full Pillow decode of the whole image (no JPEG draft mode), ``convert("RGB")``;
- resize + centre-crop with Pillow, then float32 preprocessing in NumPy
  (``/ 255``, mean/std, HWC -> CHW, a batch axis of 1), each step a new array;
- one ``session.run`` per request, on the event loop (so requests are served one at a time,
  each using all of ONNX Runtime's default intra-op threads);
- top-5 with ``argsort``, JSON via FastAPI's default encoder.

The model is the same network as the server's. It takes the float NCHW twin of the model
(``--float-input`` export) when given one, as a tutorial would; given the uint8 NHWC model, it
still does the float work and then feeds the graph uint8 pixels (documented in
docs/BENCHMARKS.md). Preprocessing numbers come from the model card so both servers compute
the same pixels.

Run: ``python -m bench.naive_server --model PATH --port 8100``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from model_card import load_card


def create_naive_app(model_path: str) -> FastAPI:
    # as tutorials write it: CUDA if this build has it, else CPU
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = [p for p in wanted if p in ort.get_available_providers()]
    session = ort.InferenceSession(model_path, providers=providers)
    print(f"naive baseline: session providers {session.get_providers()}", file=sys.stderr, flush=True)
    card = load_card(Path(model_path))
    prep = card.preprocessing
    mean = np.array(prep.mean, dtype=np.float32)
    std = np.array(prep.std, dtype=np.float32)
    input_name = session.get_inputs()[0].name
    float_input = card.input.dtype == "float32"
    app = FastAPI(title="naive baseline")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)) -> dict[str, object]:  # noqa: B008
        contents = await file.read()
        image = Image.open(io.BytesIO(contents)).convert("RGB")
        width, height = image.size
        short = min(width, height)
        new_w = prep.resize_size if width == short else int(prep.resize_size * width / height)
        new_h = prep.resize_size if height == short else int(prep.resize_size * height / width)
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left = round((new_w - prep.crop_size) / 2)
        top = round((new_h - prep.crop_size) / 2)
        image = image.crop((left, top, left + prep.crop_size, top + prep.crop_size))
        array = np.array(image).astype(np.float32) / 255.0
        array = (array - mean) / std
        if float_input:
            batch = np.expand_dims(array.transpose(2, 0, 1), axis=0).astype(np.float32)
        else:
            batch = np.expand_dims(np.array(image), axis=0)
        probabilities = session.run(None, {input_name: batch})[0][0]
        top5 = np.argsort(probabilities)[::-1][:5]
        return {
            "filename": file.filename,
            "predictions": [
                {"label": card.labels[int(i)], "probability": float(probabilities[i])} for i in top5
            ],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(create_naive_app(args.model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
