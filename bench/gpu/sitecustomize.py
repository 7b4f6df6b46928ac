"""Loaded by every Python process of a GPU benchmark run (``PYTHONPATH=bench/gpu:...``).

onnxruntime-gpu finds the CUDA and cuDNN libraries that come with PyTorch's wheels only after
``onnxruntime.preload_dlls()`` (../shared/GPU.md). The server does not call it, so each process
(servers, ceiling) calls it here, before anything creates a session. It prints nothing: the
benchmark prints the providers each session really got.
"""

import contextlib
import os

if os.environ.get("BENCH_ORT_PRELOAD_DLLS") == "1":
    with contextlib.suppress(Exception):
        import onnxruntime

        onnxruntime.preload_dlls()
