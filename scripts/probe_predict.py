"""POST a real photo to /predict and print the execution provider the served model runs on.

Used by scripts/container-test-gpu.sh. The photo is scikit-image's `chelsea` (a cat) as a
JPEG; the probe fails unless /predict answers 200 with a cat among the top-5 labels and
/v1/models names the provider.

    python scripts/probe_predict.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import io
import sys

import httpx
from PIL import Image
from skimage import data


def chelsea_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=30) as client:
        answer = client.post("/predict", files={"file": ("chelsea.jpg", chelsea_jpeg(), "image/jpeg")})
        if answer.status_code != 200:
            print(f"/predict: {answer.status_code} {answer.text[:500]}", file=sys.stderr)
            return 1
        labels = [c["label"] for c in answer.json()["predictions"][0]["top_k"]]
        if not any("cat" in label.lower() for label in labels):
            print(f"/predict: no cat in the top labels {labels}", file=sys.stderr)
            return 1
        models = client.get("/v1/models").raise_for_status().json()
    print(models["models"][0]["execution_provider"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
