"""Quantization-aware fine-tuning: an int8 variant for a model this stage trained.

When post-training quantization misses the gate, ``optimize --checkpoint RUN/best.pt`` goes
back to the PyTorch model of that run and lets training repair what int8 breaks:

1. ``nncf.quantize`` on the PyTorch model, with the same calibration images and settings as
   the post-training variant (training split, whole-range activations, 7-bit weights), which
   inserts fake-quantize operations whose scales start from those statistics;
2. a few epochs of the training loop (:func:`model_export.train.train_one_epoch`: the run's
   own augmentation, loss and batch size) at a small learning rate, with batch-norm
   statistics frozen; weights and quantizer scales both learn;
3. ``nncf.strip`` to PyTorch's own fake-quantize modules and ONNX export: QuantizeLinear /
   DequantizeLinear pairs, the same kind of graph as the post-training variant, served by the
   OpenVINO runtime.

Nothing of the validation split is used: the gate judges the result there.

NNCF computes fake quantization with a C++ extension that it compiles on first use (a C++
toolchain and, on the shared 2-core development machine, longer than NNCF's own 60-second
limit), or else with its reference functions under ``torch.compile`` (7 minutes of
compilation there). :func:`use_eager_fake_quantize` gives it the same reference functions
run eagerly: no compiler, and fast enough for the small models this stage trains on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.jit._trace import TracerWarning

from model_card import ModelCard

from .config import TrainConfig
from .data import DatasetSplit, mean_std_tensors, normalize_uint8
from .export import OPSET_VERSION, FloatToProbabilities, PixelsToProbabilities
from .models import CreatedModel
from .photos import CropSet

log = logging.getLogger(__name__)


class QatError(RuntimeError):
    """Quantization-aware training cannot run on this checkpoint; the message says why."""


@dataclass(frozen=True)
class QatConfig:
    """Where the PyTorch model comes from and how long and fast it fine-tunes."""

    checkpoint: Path
    epochs: int = 2
    lr: float = 1e-4
    workers: int | None = None  # None: the run's own


@dataclass
class QatResult:
    path: Path
    method: str
    epochs: list[dict[str, float]]


def use_eager_fake_quantize() -> None:
    """NNCF's reference fake-quantize functions, run eagerly, in place of its C++ extension."""
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import torch_executor

    class EagerQuantizedFunctions:
        Quantize_forward = staticmethod(torch_executor.forward)
        Quantize_backward = staticmethod(torch_executor.backward)

    # NNCF loads its extension lazily into this namespace; a loaded one is never built.
    extensions.QuantizedFunctionsCPU._loaded_namespace = EagerQuantizedFunctions


def _training_config(payload: dict[str, Any], config: QatConfig) -> TrainConfig:
    trained = TrainConfig.from_json(payload["config"])
    return dataclasses.replace(
        trained,
        lr=config.lr,
        epochs=config.epochs,
        warmup_epochs=0.0,
        scheduler="cosine",
        weight_decay=0.0,  # decay would shrink the learnt quantizer scales
        device="cpu",  # the eager functions above are NNCF's CPU path
        amp=False,
        workers=trained.workers if config.workers is None else config.workers,
    )


def insert_fake_quantizers(created: CreatedModel, calibration: CropSet) -> nn.Module:
    """``nncf.quantize`` of the PyTorch model on ``calibration`` (settings of the ONNX variant)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    mean, std = mean_std_tensors(created.preprocessing)
    pixels = torch.from_numpy(calibration.pixels).permute(0, 3, 1, 2)
    batches = [pixels[i : i + 1] for i in range(len(pixels))]
    dataset = nncf.Dataset(batches, lambda x: normalize_uint8(x, mean, std))
    quantized: nn.Module = nncf.quantize(
        created.model.eval(),
        dataset,
        subset_size=len(calibration),
        advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
            overflow_fix=OverflowFix.ENABLE,
        ),
    )
    return quantized


def fine_tune(
    created: CreatedModel, split: DatasetSplit, train_config: TrainConfig
) -> list[dict[str, float]]:
    """``train_config.epochs`` epochs of the training loop over everything that learns."""
    from .train import create_loaders, create_optimizer, create_scheduler, train_one_epoch

    train_loader, _, generator = create_loaders(split, created.preprocessing, train_config)
    parameters = [p for p in created.model.parameters() if p.requires_grad]
    optimizer = create_optimizer([{"params": parameters, "lr": train_config.lr, "name": "all"}], train_config)
    steps = max(1, len(train_loader))
    scheduler = create_scheduler(optimizer, train_config, train_config.epochs * steps, steps)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    criterion = nn.CrossEntropyLoss(label_smoothing=train_config.label_smoothing)
    history = []
    for epoch in range(train_config.epochs):
        generator.manual_seed(train_config.seed * 10_000 + 7_000 + epoch)
        stats = train_one_epoch(
            created,
            train_loader,
            optimizer,
            scheduler,
            scaler,
            criterion,
            torch.device("cpu"),
            amp=False,
            description=f"quantization-aware epoch {epoch + 1}/{train_config.epochs}",
            freeze_bn_stats=True,
        )
        history.append({"train_loss": round(stats.loss, 4), "train_top1": round(stats.top1, 4)})
        log.info(
            "quantization-aware epoch %d/%d: train loss %.4f, top-1 %.4f, %.0f images/s",
            epoch + 1,
            train_config.epochs,
            stats.loss,
            stats.top1,
            stats.images_per_s,
        )
    return history


def export_quantized(quantized: nn.Module, card: ModelCard, pixels: np.ndarray, path: Path) -> None:
    """The fine-tuned model as a QDQ ONNX graph with ``card``'s input and its probabilities.

    PyTorch's fake-quantize modules check at run time whether they are enabled, which
    ``torch.export`` cannot trace; the TorchScript exporter records them as enabled (they
    are) and writes each as a QuantizeLinear / DequantizeLinear pair.
    """
    import nncf

    mean, std = mean_std_tensors(card.preprocessing)
    example = normalize_uint8(torch.from_numpy(pixels).permute(0, 3, 1, 2), mean, std)
    model = nncf.strip(quantized, do_copy=True, example_input=example).eval()
    wrapper: nn.Module
    if card.input.dtype == "uint8":
        wrapper, inputs = PixelsToProbabilities(model, card.preprocessing).eval(), torch.from_numpy(pixels)
    else:
        wrapper, inputs = FloatToProbabilities(model).eval(), example
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter
        warnings.filterwarnings("ignore", category=TracerWarning)  # the enabled checks
        torch.onnx.export(
            wrapper,
            (inputs.contiguous(),),
            str(path),
            input_names=[card.input.name],
            output_names=[card.output.name],
            dynamic_axes={card.input.name: {0: "batch"}, card.output.name: {0: "batch"}},
            opset_version=OPSET_VERSION,
            dynamo=False,
        )


def fold_weight_quantization(model: onnx.ModelProto) -> int:
    """Store each quantized weight as its int8 values: the exporter writes float weights behind a
    QuantizeLinear whose inputs are all constants; compute it once (ONNX's rule: round half to
    even, add the zero point, saturate) and keep only the DequantizeLinear. Returns how many."""
    graph = model.graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:  # in order: what an Identity passes on is known before it
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    folded = [n for n in graph.node if n.op_type == "QuantizeLinear" and all(i in constants for i in n.input)]
    for node in folded:
        weights, scale, zero_point = (constants[name] for name in node.input)
        if scale.ndim == 1:  # per channel, along the node's axis
            shape = [1] * weights.ndim
            shape[next((a.i for a in node.attribute if a.name == "axis"), 1)] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        limits = np.iinfo(zero_point.dtype)
        steps = np.rint(weights.astype(np.float32) / scale.astype(np.float32))
        quantized = np.clip(steps + zero_point, limits.min, limits.max).astype(zero_point.dtype)
        graph.initializer.append(numpy_helper.from_array(quantized, node.output[0]))
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)
    return len(folded)


def quantization_aware_variant(
    config: QatConfig, split: DatasetSplit, calibration: CropSet, card: ModelCard, path: Path
) -> QatResult:
    """Fine-tune the checkpoint's model with int8 in the loop and write it to ``path``."""
    from .train import load_checkpoint, model_from_checkpoint, seed_everything

    payload = load_checkpoint(config.checkpoint)
    if list(payload["labels"]) != list(card.labels):
        raise QatError(f"{config.checkpoint} has other labels than the model it should make a variant of")
    if config.epochs < 1:
        raise QatError(f"quantization-aware training needs at least one epoch, got {config.epochs}")
    use_eager_fake_quantize()
    created = model_from_checkpoint(payload)
    head_name = next(name for name, module in created.model.named_modules() if module is created.head)
    train_config = _training_config(payload, config)
    seed_everything(train_config.seed)  # dropout and augmentation: the same variant every time
    started = time.perf_counter()
    quantized = insert_fake_quantizers(created, calibration)
    tuned = dataclasses.replace(created, model=quantized, head=quantized.get_submodule(head_name))
    history = fine_tune(tuned, split, train_config)
    export_quantized(quantized.eval(), card, calibration.pixels[:2], path)
    graph = onnx.load(str(path))
    log.info("%d quantized weights stored as int8", fold_weight_quantization(graph))
    onnx.save(graph, str(path))
    log.info("quantization-aware training and export in %.0f s", time.perf_counter() - started)
    method = (
        f"NNCF quantization-aware training (PyTorch): fake int8 inserted on {len(calibration)} training "
        f"images (symmetric per-channel weights in 7 bits, whole-range activations), then "
        f"{config.epochs} epochs of fine-tuning on the training split (AdamW, lr {config.lr:g}, cosine, "
        f"batch-norm statistics frozen; weights and quantizer scales learn); QDQ graph. Every layer in int8"
    )
    return QatResult(path, method, copy.deepcopy(history))
