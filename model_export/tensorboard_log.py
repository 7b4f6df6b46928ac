"""TensorBoard event files of a training run, and of an ONNX evaluation logged into the same run.

``torch.utils.tensorboard.SummaryWriter`` writes them into the run folder itself, so
``tensorboard --logdir runs`` shows every run under ``runs/`` side by side, named by its folder.
What a training run logs (tags):

- per step (x: optimizer steps): ``step/train_loss``, ``step/images_per_s``, ``step/lr/<group>``;
- per epoch (x: epochs): ``loss/train`` + ``loss/val``, ``top1/train`` + ``top1/val``,
  ``top5/val`` (5+ classes), ``macro_f1/val``, ``lr/<group>`` (``head``, and ``backbone`` in
  stage 2, so its smaller rate shows), ``images_per_s/train`` and ``stage/index`` (the stage
  marker: 0 for the first stage, 1 from the epoch fine-tuning starts; its text is ``stage``);
  the Custom Scalars tab draws train and val on one chart;
- images: ``samples/augmented_train`` (a grid of augmented training images with their labels,
  at the start) and ``confusion_matrix/val`` each epoch;
- histograms ``weights/<name>`` and ``grads/<name>`` of the trainable parameters every
  ``histogram_every`` epochs (and the first), the model graph, ``pr_curve/<label>`` on the
  best checkpoint, and the hyperparameters with the final metrics (``hparam/*``, HParams tab).

With ``tensorboard`` disabled, or the package absent, every method does nothing.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
from torch import nn
from torch.jit._trace import TracerWarning
from torch.utils.data import Dataset

from .plots import confusion_matrix_figure, samples_figure

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)

SAMPLE_GRID_IMAGES = 16
# Custom Scalars: train and validation on one chart each (the plain Scalars tab shows one tag a chart).
SCALAR_LAYOUT = {
    "training": {
        "loss": ["Multiline", ["loss/train", "loss/val"]],
        "top-1": ["Multiline", ["top1/train", "top1/val"]],
        "learning rate": ["Multiline", ["^lr/"]],
    }
}


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def create_summary_writer(log_dir: Path, purge_step: int | None = None) -> SummaryWriter:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _scalar_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The config flattened to the value types the HParams plugin takes (None becomes "none")."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_scalar_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float | str):
            flat[prefix + key] = value
        elif value is None:
            flat[prefix + key] = "none"
    return flat


LogMethod = TypeVar("LogMethod", bound=Callable[..., None])


def _timed(method: LogMethod) -> LogMethod:
    """Add the method's time to the board's ``logging_s``: what logging costs the run, measured."""

    @functools.wraps(method)
    def timed(self: TrainingBoard, *args: Any, **kwargs: Any) -> None:
        started_s = time.perf_counter()
        try:
            method(self, *args, **kwargs)
        finally:
            self.logging_s += time.perf_counter() - started_s

    return cast(LogMethod, timed)


def _unchecked_graph(model: nn.Module, example: torch.Tensor) -> tuple[Any, Any]:
    """``SummaryWriter.add_graph``'s graph protos, from a trace without ``check_trace``.

    ``add_graph`` traces with the check on, which runs the model twice more and compares its
    outputs: for efficientnet_lite0 at 64 px, 4.1 s against 1.2 s without (one call each, 2
    threads, the shared development VM), a few percent of the README's digits example. A
    picture needs no such check. Uses torch's own graph parser (private; should it move, the
    public path is taken instead).
    """
    try:
        from tensorboard.compat.proto.config_pb2 import RunMetadata
        from tensorboard.compat.proto.graph_pb2 import GraphDef
        from tensorboard.compat.proto.step_stats_pb2 import DeviceStepStats, StepStats
        from tensorboard.compat.proto.versions_pb2 import VersionDef
        from torch.utils.tensorboard._pytorch_graph import parse
    except ImportError:
        from torch.utils.tensorboard._pytorch_graph import graph as checked_graph

        checked: Callable[..., tuple[Any, Any]] = checked_graph  # untyped in torch
        return checked(model, example, False, False)
    trace_module: Callable[..., Any] = torch.jit.trace  # untyped in torch
    parse_graph: Callable[..., list[Any]] = parse
    trace = trace_module(model, example, strict=False, check_trace=False)
    graph = trace.graph
    torch._C._jit_pass_inline(graph)
    nodes = parse_graph(graph, trace, (example,))
    # As torch's graph(): TensorBoard is told the graph ran on the CPU, which is only a label.
    stats = RunMetadata(step_stats=StepStats(dev_stats=[DeviceStepStats(device="/device:CPU:0")]))
    return GraphDef(node=nodes, versions=VersionDef(producer=22)), stats


class TrainingBoard:
    """TensorBoard logging of one training run; a board without a writer logs nothing."""

    def __init__(self, writer: SummaryWriter | None, labels: Sequence[str], histogram_every: int) -> None:
        self.writer = writer
        self.labels = list(labels)
        self.histogram_every = histogram_every
        self.step = 0
        self.logging_s = 0.0  # time spent in this board's methods, writer included
        self._last_step_s = time.perf_counter()
        self._lr_sums: dict[str, float] = {}
        self._epoch_steps = 0

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def __enter__(self) -> TrainingBoard:
        return self

    @_timed
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.writer is not None:
            self.writer.close()

    # ---- the start of a run

    @_timed
    def log_start(self, model: nn.Module, example: torch.Tensor, train_set: Dataset[Any], seed: int) -> None:
        """The graph, the chart layout and a grid of augmented training samples."""
        if self.writer is None:
            return
        self.writer.add_custom_scalars(SCALAR_LAYOUT)
        self.log_graph(model, example)
        indices = random.Random(seed).sample(range(len(train_set)), min(SAMPLE_GRID_IMAGES, len(train_set)))  # type: ignore[arg-type]
        samples = [train_set[i] for i in indices]
        images = [pixels.permute(1, 2, 0).numpy() for pixels, _ in samples]
        titles = [self.labels[target] for _, target in samples]
        self.writer.add_figure("samples/augmented_train", samples_figure(images, titles), 0)

    def log_graph(self, model: nn.Module, example: torch.Tensor) -> None:
        """The model graph, traced on one validation image. ``torch.jit.trace`` is the only tracer
        TensorBoard's graph reader takes; it is deprecated in the PyTorch we pin (its warning is
        silenced here)."""
        if self.writer is None:
            return
        was_training = model.training
        model.eval()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.trace")
                warnings.filterwarnings("ignore", category=TracerWarning)
                file_writer = self.writer.file_writer
                assert file_writer is not None  # SummaryWriter.__init__ creates it
                file_writer.add_graph(_unchecked_graph(model, example))
        except Exception:  # a graph that cannot be traced costs the Graphs tab, not the run
            log.warning("TensorBoard: could not trace the model graph", exc_info=True)
        finally:
            model.train(was_training)

    def set_step(self, step: int) -> None:
        """Continue the step count (a resumed run)."""
        self.step = step

    @_timed
    def log_stage(self, stage_name: str, first_epoch: int, lrs: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        rates = ", ".join(f"{name} {lr:g}" for name, lr in lrs.items())
        self.writer.add_text(
            "stage", f"epoch {first_epoch}: stage **{stage_name}** starts (lr {rates})", first_epoch
        )

    # ---- training steps and epochs

    @_timed
    def log_step(self, loss: float, batch_images: int, optimizer: torch.optim.Optimizer) -> None:
        """One optimizer step: its loss, its images/s (data loading included) and each group's lr."""
        self.step += 1
        now_s = time.perf_counter()
        elapsed_s, self._last_step_s = now_s - self._last_step_s, now_s
        if self.writer is None:
            return
        self.writer.add_scalar("step/train_loss", loss, self.step)
        self.writer.add_scalar("step/images_per_s", batch_images / max(elapsed_s, 1e-9), self.step)
        for group in optimizer.param_groups:
            self.writer.add_scalar(f"step/lr/{group['name']}", group["lr"], self.step)
            self._lr_sums[group["name"]] = self._lr_sums.get(group["name"], 0.0) + group["lr"]
        self._epoch_steps += 1

    def epoch_started(self) -> None:
        self._last_step_s = time.perf_counter()
        self._lr_sums = {}
        self._epoch_steps = 0

    @_timed
    def log_epoch(
        self,
        epoch: int,
        stage_index: int,
        train: Mapping[str, float],
        val: Mapping[str, Any],
        model: nn.Module,
    ) -> None:
        """The epoch's scalars (each group's lr is its mean over the epoch's steps: warm-up and
        cosine move it within an epoch), the validation confusion matrix, and every N epochs the
        histograms."""
        if self.writer is None:
            return
        scalars = {
            "loss/train": train["loss"],
            "loss/val": val["log_loss"],
            "top1/train": train["top1"],
            "top1/val": val["top1"],
            "macro_f1/val": val["macro_f1"],
            "images_per_s/train": train["images_per_s"],
            "stage/index": stage_index,
        }
        if val.get("top5") is not None:
            scalars["top5/val"] = val["top5"]
        steps = max(1, self._epoch_steps)
        scalars.update({f"lr/{name}": total / steps for name, total in self._lr_sums.items()})
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, epoch)
        title = f"epoch {epoch}: validation top-1 {val['top1']:.3f}"
        figure = confusion_matrix_figure(val["confusion_matrix"], self.labels, title)
        self.writer.add_figure("confusion_matrix/val", figure, epoch)
        if self.histogram_every > 0 and (epoch - 1) % self.histogram_every == 0:
            self.log_histograms(model, epoch)

    def log_histograms(self, model: nn.Module, epoch: int) -> None:
        """Weights and last-batch gradients of the trainable parameters only: the cost stays bounded
        by what learns, not by the whole backbone."""
        if self.writer is None:
            return
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            self.writer.add_histogram(f"weights/{name}", parameter.detach().float().cpu(), epoch)
            if parameter.grad is not None:
                self.writer.add_histogram(f"grads/{name}", parameter.grad.detach().float().cpu(), epoch)

    # ---- the end of a run

    @_timed
    def log_best(self, probabilities: np.ndarray, targets: np.ndarray, epoch: int) -> None:
        """One precision-recall curve per class, on the best checkpoint's validation predictions."""
        if self.writer is None:
            return
        for index, label in enumerate(self.labels):
            self.writer.add_pr_curve(f"pr_curve/{label}", targets == index, probabilities[:, index], epoch)

    @_timed
    def log_hparams(self, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Hyperparameters and final metrics into this run itself (``add_hparams`` would start a
        sub-run per call), so the HParams tab lists one row per run folder."""
        if self.writer is None:
            return
        log_hparams(self.writer, config, metrics)


def log_hparams(writer: SummaryWriter, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    from torch.utils.tensorboard.summary import hparams

    final = {
        f"hparam/{key}": float(metrics[key])
        for key in ("top1", "top5", "log_loss", "macro_f1", "best_epoch")
        if metrics.get(key) is not None
    }
    summaries: Callable[..., tuple[Any, Any, Any]] = hparams  # untyped in torch
    file_writer = writer.file_writer
    assert file_writer is not None  # SummaryWriter.__init__ creates it
    for summary in summaries(_scalar_hparams(config), final):
        file_writer.add_summary(summary)
    for tag, value in final.items():
        writer.add_scalar(tag, value)


def create_training_board(
    log_dir: Path, enabled: bool | None, labels: Sequence[str], histogram_every: int, purge_step: int | None
) -> TrainingBoard:
    """A board writing into ``log_dir``; ``enabled=None`` means on when tensorboard is installed."""
    if enabled is None:
        enabled = tensorboard_available()
    elif enabled and not tensorboard_available():
        raise RuntimeError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(it is in the export extra), or train with --no-tensorboard"
        )
    writer = create_summary_writer(log_dir, purge_step) if enabled else None
    if writer is not None:
        log.info("TensorBoard event files in %s (tensorboard --logdir %s)", log_dir, log_dir.parent)
    return TrainingBoard(writer, labels, histogram_every)


def log_evaluation(
    log_dir: Path, name: str, metrics: Mapping[str, Any], probabilities: np.ndarray, targets: np.ndarray
) -> None:
    """An ONNX evaluation's metrics, confusion matrix and PR curves, under ``evaluate/<name>/``,
    into ``log_dir`` (a training run's folder: the evaluation then shows beside its training)."""
    if not tensorboard_available():
        raise RuntimeError("--log-dir needs the tensorboard package: pip install tensorboard (export extra)")
    writer = create_summary_writer(log_dir)
    try:
        prefix = f"evaluate/{name}"
        for key in ("top1", "top5", "log_loss", "macro_f1"):
            if metrics.get(key) is not None:
                writer.add_scalar(f"{prefix}/{key}", metrics[key], 0)
        labels = list(metrics["labels"])
        if len(labels) <= 100:
            title = f"{name}: top-1 {metrics['top1']:.3f}"
            figure = confusion_matrix_figure(metrics["confusion_matrix"], labels, title)
            writer.add_figure(f"{prefix}/confusion_matrix", figure, 0)
            for index, label in enumerate(labels):
                curve = (targets == index, probabilities[:, index])
                writer.add_pr_curve(f"{prefix}/pr_curve/{label}", *curve, 0)
    finally:
        writer.close()
