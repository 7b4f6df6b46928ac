"""Loaded by every Python process of a GPU benchmark run (``PYTHONPATH=bench/gpu:...``).

onnxruntime-gpu finds the CUDA and cuDNN libraries that come with PyTorch's wheels only after
``onnxruntime.preload_dlls()`` (../shared/GPU.md). Our server and the ceiling call it
themselves (``app.inference.engine.create_engine`` does whenever the CUDA provider is offered);
the naive baseline (``bench/naive_server.py``) builds its session directly, as tutorials do,
and gets them only here. It prints nothing: the benchmark prints the providers each session
really got.
"""

import contextlib
import os

if os.environ.get("BENCH_ORT_PRELOAD_DLLS") == "1":
    with contextlib.suppress(Exception):
        import onnxruntime

        onnxruntime.preload_dlls()
