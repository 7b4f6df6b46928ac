"""gRPC through the load balancer: grpc.health.v1 and tritonclient's ModelInfer, via nginx.

Used by scripts/container-test.sh after the stack is up: nginx's docker/nginx/grpc.conf must
pass the v2 protocol's gRPC calls to the replicas and their answers back.

    python scripts/probe_grpc.py --address 127.0.0.1:8081 --calls 8
"""

from __future__ import annotations

import argparse
import io
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from skimage import data

CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}


def chelsea_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", required=True, help="HOST:PORT of nginx's gRPC server")
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--model", default="efficientnet_lite0-imagenet1k")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.address) as channel:
        request = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status
    if status != health_pb2.HealthCheckResponse.SERVING:
        print(f"health: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}, expected SERVING")
        return 1
    client = grpcclient.InferenceServerClient(args.address)
    server = client.get_server_metadata(as_json=True)["name"]
    image = grpcclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[chelsea_jpeg()]], dtype=np.object_))
    wrong = 0
    for _ in range(args.calls):
        result = client.infer(
            args.model, [image], outputs=[grpcclient.InferRequestedOutput("probs", class_count=5)]
        )
        labels = {element.decode().split(":", 2)[2] for element in result.as_numpy("probs")[0]}
        wrong += not labels & CAT_LABELS
    print(
        f"gRPC via {args.address} ({server}): health SERVING, "
        f"{args.calls} ModelInfer calls, {wrong} without a cat"
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
