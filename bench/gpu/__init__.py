"""``python -m bench.gpu``: the GPU run, a few minutes that measure what only a GPU can show.

One plan, most important first, each step in its own process with its own time limit, every
figure written to ``results.json`` as soon as it is measured (a run cut off anywhere still
returns what it had), then ``report.md`` and the plots:

1. ``env``      ONNX Runtime's version and providers, the GPU (``nvidia-smi``), what CUDA lacks
2. ``models``   the fp32 model and its fp16 twin (carried, or a tiny stand-in for the dry run)
3. ``parity``   the CUDA provider against the CPU provider on real photos (top-1, max |diff|)
4. ``sweep``    the model alone, batch 1 to 256, fp32 and fp16, with and without I/O binding
5. ``server``   the server end to end, multipart JPEGs, c=1 to c=512, batching on and off, one
                process and several (each decoding on its own cores), GPU utilisation sampled
6. ``tensorrt`` the TensorRT provider, where it loads
7. the report

``--dry-run`` runs the same plan on the CPU provider with a tiny model, small batches and
sub-second windows (CI runs it, tests/bench/test_gpu_plan.py), so a change that breaks the GPU
run fails here and not on a lent machine. See docs/GPU.md.
"""
