"""Training and fine-tuning: two-stage transfer learning, early stopping, checkpoints, resume, lr sweep.

A pretrained model is fine-tuned the way practitioners do it: stage ``head`` trains only the new
classifier on a frozen backbone (its batch-norm statistics frozen too), then stage ``finetune``
unfreezes the last blocks with a smaller learning rate for the pretrained layers than for the
head. A model without pretrained weights trains in one stage, ``full``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model_card import Preprocessing

from .config import TrainConfig
from .data import (
    SPLIT_FILENAME,
    DatasetSplit,
    ImageListDataset,
    create_eval_transform,
    create_train_transform,
    load_dataset_split,
    load_split,
    mean_std_tensors,
    normalize_uint8,
    save_split,
)
from .metrics import compute_metrics, headline, summary_metrics
from .models import WEIGHTS_NONE, CreatedModel, create_model
from .plots import plot_confusion_matrix, plot_history, plot_lr_sweep
from .tensorboard_log import TrainingBoard, create_training_board

log = logging.getLogger(__name__)

BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
CHECKPOINT_FORMAT = 1


class TrainingError(RuntimeError):
    """Training cannot start or continue as configured."""


@dataclass
class StagePlan:
    """One training stage: which parameters learn, at which rates, for how many epochs."""

    name: str
    epochs: int
    head_lr: float
    backbone_lr: float
    trainable_blocks: list[nn.Module]


@dataclass
class EarlyStopping:
    """Stop when validation loss has not improved by ``min_delta`` for ``patience`` epochs."""

    patience: int
    min_delta: float = 0.0
    best_loss: float = math.inf
    bad_epochs: int = 0

    def step(self, val_loss: float) -> bool:
        """Record one epoch; True when training should stop."""
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss = val_loss
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.patience > 0 and self.bad_epochs >= self.patience


@dataclass
class EpochStats:
    loss: float
    top1: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


# --------------------------------------------------------------------------------------------
# setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"--device {name} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def create_loaders(
    split: DatasetSplit, preprocessing: Preprocessing, config: TrainConfig
) -> tuple[DataLoader[Any], DataLoader[Any], torch.Generator]:
    """Shuffled training and ordered validation loaders, and the generator behind the shuffle."""
    train_set = ImageListDataset(split.train, create_train_transform(preprocessing, config.augment))
    val_set = ImageListDataset(split.val, create_eval_transform(preprocessing))
    generator = torch.Generator().manual_seed(config.seed)
    common: dict[str, Any] = {
        "batch_size": config.batch_size,
        "num_workers": config.workers,
        "persistent_workers": config.workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }
    # drop_last avoids a 1-image batch, which batch norm cannot train on.
    drop_last = len(train_set) > config.batch_size
    train_loader = DataLoader(train_set, shuffle=True, generator=generator, drop_last=drop_last, **common)
    val_loader = DataLoader(val_set, shuffle=False, **common)
    return train_loader, val_loader, generator


def plan_stages(created: CreatedModel, config: TrainConfig) -> list[StagePlan]:
    """``head`` then ``finetune`` for a pretrained model, else one ``full`` stage."""
    if not created.pretrained:
        return [StagePlan("full", config.epochs, config.lr, config.lr, list(created.blocks))]
    blocks = (
        created.blocks
        if config.unfreeze_blocks < 0
        else created.blocks[len(created.blocks) - config.unfreeze_blocks :]
    )
    if config.unfreeze_blocks == 0:
        blocks = []
    stages = [
        StagePlan("head", config.head_epochs, config.lr, 0.0, []),
        StagePlan("finetune", config.epochs, config.lr, config.lr * config.backbone_lr_scale, blocks),
    ]
    return [s for s in stages if s.epochs > 0]


def _head_parameter_ids(created: CreatedModel) -> set[int]:
    return {id(p) for p in created.head.parameters()}


def apply_stage(created: CreatedModel, stage: StagePlan) -> list[dict[str, Any]]:
    """Freeze everything but the head and the stage's blocks; return optimizer parameter groups."""
    model = created.model
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    head_ids = _head_parameter_ids(created)
    for parameter in created.head.parameters():
        parameter.requires_grad_(True)
    backbone: list[nn.Parameter] = []
    for block in stage.trainable_blocks:
        for parameter in block.parameters():
            if id(parameter) not in head_ids and not parameter.requires_grad:
                parameter.requires_grad_(True)
                backbone.append(parameter)
    if stage.name == "full":
        # Everything trains, including modules outside the named blocks (e.g. a stem).
        for parameter in model.parameters():
            if id(parameter) not in head_ids and not parameter.requires_grad:
                parameter.requires_grad_(True)
                backbone.append(parameter)
    groups = [{"params": list(created.head.parameters()), "lr": stage.head_lr, "name": "head"}]
    if backbone:
        groups.append({"params": backbone, "lr": stage.backbone_lr, "name": "backbone"})
    return groups


def set_train_mode(created: CreatedModel, freeze_bn_stats: bool = False) -> None:
    """Train mode, except batch norms whose statistics must not move.

    Frozen modules always keep their statistics (Keras' ``trainable=False``). With
    ``freeze_bn_stats`` every backbone batch norm stays in inference mode even while its weights
    learn, as Keras' transfer-learning guide recommends: batch statistics of a small, unlike
    dataset would otherwise replace ImageNet's and throw away what the head learnt in stage 1.
    """
    created.model.train()
    head_modules = set(created.head.modules())
    for module in created.model.modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module in head_modules:
            continue
        if freeze_bn_stats or not any(p.requires_grad for p in module.parameters()):
            module.eval()


def create_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
        )
    raise TrainingError(f"unknown --optimizer {config.optimizer!r}; use adamw or sgd")


def create_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warm-up, then cosine decay to 1% (``cosine``), x0.1 every third of
    the run (``step``), or flat.
    """
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if config.scheduler == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if config.scheduler == "step":
            return 0.1 ** int(min(progress, 0.999) * 3)
        return 1.0

    if config.scheduler not in ("cosine", "step", "none"):
        raise TrainingError(f"unknown --scheduler {config.scheduler!r}; use cosine, step or none")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# epochs


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


def train_one_epoch(
    created: CreatedModel,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    device: torch.device,
    amp: bool,
    description: str,
    freeze_bn_stats: bool = False,
    board: TrainingBoard | None = None,
) -> EpochStats:
    set_train_mode(created, freeze_bn_stats)
    mean, std = mean_std_tensors(created.preprocessing, device)
    total_loss, correct, seen = 0.0, 0, 0
    started_s = time.perf_counter()
    progress = tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True)
    for pixels, targets in progress:
        pixels, targets = pixels.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = created.model(normalize_uint8(pixels, mean, std))
            loss = criterion(logits, targets)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"training loss became {loss.item()} ({description}); "
                f"lower --lr (now {scheduler.get_last_lr()})"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        batch_loss = loss.item()
        if board is not None:
            board.log_step(batch_loss, len(targets), optimizer)  # before the lr moves on
        scheduler.step()
        total_loss += batch_loss * len(targets)
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(targets)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}", top1=f"{correct / seen:.3f}")
    return EpochStats(
        total_loss / max(seen, 1), correct / max(seen, 1), seen, time.perf_counter() - started_s
    )


@torch.inference_mode()
def predict(
    created: CreatedModel,
    loader: DataLoader[Any],
    device: torch.device,
    amp: bool,
    description: str = "validate",
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and targets over ``loader``."""
    created.model.eval()
    mean, std = mean_std_tensors(created.preprocessing, device)
    all_probabilities: list[np.ndarray] = []
    all_targets: list[np.ndarray] = []
    for pixels, targets in tqdm(loader, desc=description, unit="batch", leave=False, dynamic_ncols=True):
        with _autocast(device, amp):
            logits = created.model(normalize_uint8(pixels.to(device), mean, std))
        all_probabilities.append(logits.float().softmax(1).cpu().numpy())
        all_targets.append(targets.numpy())
    return np.concatenate(all_probabilities), np.concatenate(all_targets)


def evaluate(
    created: CreatedModel,
    loader: DataLoader[Any],
    device: torch.device,
    amp: bool,
    labels: list[str],
    description: str = "validate",
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Metrics over ``loader`` (:func:`compute_metrics`), with the probabilities and targets."""
    probabilities, targets = predict(created, loader, device, amp, description)
    return compute_metrics(probabilities, targets, labels), probabilities, targets


# --------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_payload(
    created: CreatedModel,
    config: TrainConfig,
    split: DatasetSplit,
    *,
    stage_index: int,
    epoch_in_stage: int,
    history: list[dict[str, Any]],
    best_val_loss: float,
    metrics: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    stopper: EarlyStopping | None = None,
) -> dict[str, Any]:
    """A checkpoint carries what ``export`` needs for the card and what ``--resume`` needs to continue."""
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": created.arch,
        "num_classes": created.num_classes,
        "labels": split.classes,
        "preprocessing": created.preprocessing.model_dump(),
        "weights_source": created.weights_source,
        "pretrained": created.pretrained,
        "dataset": split.summary(),
        "val_samples": [str(p) for p, _ in split.val[:64]],
        "metrics": metrics or {},
        "config": config.to_json(),
        "model_state": created.model.state_dict(),
        "stage_index": stage_index,
        "epoch_in_stage": epoch_in_stage,
        "history": history,
        "best_val_loss": best_val_loss,
        "optimizer_state": optimizer.state_dict() if optimizer else None,
        "scheduler_state": scheduler.state_dict() if scheduler else None,
        "scaler_state": scaler.state_dict() if scaler else None,
        "stopper": asdict(stopper) if stopper else None,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    }


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    # Write then rename: an interrupted save never leaves a truncated checkpoint behind.
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    # Our checkpoints hold numpy/python RNG state, so they are not weights-only pickles.
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a model_export checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> CreatedModel:
    """Rebuild the trained model (no pretrained download: the weights come from the checkpoint)."""
    preprocessing = Preprocessing.model_validate(payload["preprocessing"])
    created = create_model(
        payload["arch"],
        payload["num_classes"],
        weights=WEIGHTS_NONE,
        crop_size=preprocessing.crop_size,
        resize_size=preprocessing.resize_size,
    )
    created.model.load_state_dict(payload["model_state"], strict=True)
    created.preprocessing = preprocessing
    created.weights_source = payload["weights_source"]
    created.pretrained = payload["pretrained"]
    return created


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class TrainResult:
    output_dir: Path
    best_checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    train_images_per_s: float
    tensorboard_s: float = 0.0  # spent logging to TensorBoard, in the training process


@dataclass
class TrainingRun:
    """What the stages and epochs of one run share, and what they accumulate."""

    config: TrainConfig
    created: CreatedModel
    split: DatasetSplit
    device: torch.device
    train_loader: DataLoader[Any]
    val_loader: DataLoader[Any]
    generator: torch.Generator
    criterion: nn.Module
    board: TrainingBoard
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = math.inf
    speeds: list[float] = field(default_factory=list)


@dataclass
class StageOptimization:
    """One stage's optimizer, per-step schedule, AMP scaler and early stopping, and its first epoch."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    first_epoch: int = 0


def run_training(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train (or resume) into ``config.output_dir``: checkpoints, split, history, metrics, plots and
    TensorBoard event files."""
    if resume:
        config = TrainConfig.from_json(load_checkpoint(config.output_dir / LAST_CHECKPOINT)["config"])
    seed_everything(config.seed)
    created, split, state = prepare_run(config, resume)
    stages = plan_stages(created, config)
    if not stages:
        raise TrainingError("nothing to train: --head-epochs and --epochs are both 0")
    with create_run(config, created, split, state) as run:
        log_plan(run, stages)
        for stage_index in range(state["stage_index"] if state else 0, len(stages)):
            train_stage(run, stages, stage_index, state)
            state = None
        result = finish_run(run)
    result.tensorboard_s = run.board.logging_s  # the writer's close included
    return result


def prepare_run(
    config: TrainConfig, resume: bool
) -> tuple[CreatedModel, DatasetSplit, dict[str, Any] | None]:
    """Model and split for a fresh run, or both restored from ``last.pt`` for ``--resume``."""
    config.output_dir.mkdir(parents=True, exist_ok=True)
    last_path = config.output_dir / LAST_CHECKPOINT
    if resume:
        payload = load_checkpoint(last_path)
        split = load_split(config.output_dir / SPLIT_FILENAME)
        return model_from_checkpoint(payload), split, payload
    split = load_dataset_split(config.data_dir, config.val_ratio, config.seed)
    save_split(split, config.output_dir / SPLIT_FILENAME)
    created = create_model(
        config.arch, len(split.classes), config.weights, config.crop_size, config.resize_size
    )
    return created, split, None


@contextmanager
def create_run(
    config: TrainConfig, created: CreatedModel, split: DatasetSplit, state: dict[str, Any] | None
) -> Iterator[TrainingRun]:
    """Device, loaders, loss and the TensorBoard board of a run; a resumed run gets its history,
    best loss and random state back, and its board continues (and purges) from the last step."""
    device = resolve_device(config.device)
    created.model.to(device)
    train_loader, val_loader, generator = create_loaders(split, created.preprocessing, config)
    history: list[dict[str, Any]] = state["history"] if state else []
    steps_done = len(history) * max(1, len(train_loader))
    board = create_training_board(
        config.output_dir,
        config.tensorboard,
        split.classes,
        config.histogram_every,
        purge_step=steps_done if state else None,
    )
    run = TrainingRun(
        config,
        created,
        split,
        device,
        train_loader,
        val_loader,
        generator,
        nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        board,
        history,
        state["best_val_loss"] if state else math.inf,
    )
    with board:
        if state:
            restore_rng(state["rng"])
            board.set_step(steps_done)
        else:
            pixels, _ = next(iter(val_loader))
            mean, std = mean_std_tensors(created.preprocessing, device)
            example = normalize_uint8(pixels[:1].to(device), mean, std)
            board.log_start(created.model, example, train_loader.dataset, config.seed)
        yield run


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])


def log_plan(run: TrainingRun, stages: list[StagePlan]) -> None:
    log.info(
        "training %s (%s) on %d images, validating on %d, %d classes, %s, stages %s",
        run.created.arch,
        run.created.weights_source,
        len(run.split.train),
        len(run.split.val),
        len(run.split.classes),
        run.device,
        [f"{s.name}:{s.epochs}" for s in stages],
    )


def train_stage(
    run: TrainingRun, stages: list[StagePlan], stage_index: int, state: dict[str, Any] | None
) -> None:
    """The epochs of one stage, until its last or an early stop; then back to its best weights."""
    stage = stages[stage_index]
    resumed = state if state and stage_index == state["stage_index"] else None
    optimization = create_stage_optimization(run, stage, resumed)
    log_stage(run, stage, stage_index, optimization)
    epochs = tqdm(
        range(optimization.first_epoch, stage.epochs),
        desc=f"stage {stage.name}",
        unit="epoch",
        dynamic_ncols=True,
    )
    for epoch in epochs:
        val = run_epoch(run, stage, epoch, optimization)
        epochs.set_postfix(
            train_loss=f"{run.history[-1]['train_loss']:.4f}",
            val_loss=f"{val['log_loss']:.4f}",
            val_top1=f"{val['top1']:.4f}",
        )
        stop = optimization.stopper.step(val["log_loss"])
        save_epoch(run, stage_index, epoch, val, optimization, done=stop or epoch + 1 == stage.epochs)
        if stop:
            log.info(
                "stage %s: early stop after epoch %d (no val-loss gain in %d epochs)",
                stage.name,
                epoch + 1,
                run.config.patience,
            )
            break
    # Keras' restore_best_weights: the next stage, and the result, start from the best epoch.
    if (run.config.output_dir / BEST_CHECKPOINT).is_file():
        best = load_checkpoint(run.config.output_dir / BEST_CHECKPOINT)
        run.created.model.load_state_dict(best["model_state"])


def create_stage_optimization(
    run: TrainingRun, stage: StagePlan, state: dict[str, Any] | None
) -> StageOptimization:
    """Freeze and unfreeze for ``stage``, and its optimizer and schedule (restored when resuming
    inside this stage)."""
    optimizer = create_optimizer(apply_stage(run.created, stage), run.config)
    steps_per_epoch = max(1, len(run.train_loader))
    scheduler = create_scheduler(optimizer, run.config, stage.epochs * steps_per_epoch, steps_per_epoch)
    device_type = run.device.type
    scaler = torch.amp.GradScaler(device_type, enabled=run.config.amp and device_type == "cuda")
    optimization = StageOptimization(
        optimizer, scheduler, scaler, EarlyStopping(run.config.patience, run.config.min_delta)
    )
    if state and state["optimizer_state"] is not None:
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        scaler.load_state_dict(state["scaler_state"])
        optimization.stopper = EarlyStopping(**state["stopper"])
        optimization.first_epoch = state["epoch_in_stage"]
    return optimization


def _group_lrs(optimizer: torch.optim.Optimizer, initial: bool = False) -> dict[str, float]:
    return {
        group["name"]: float(group.get("initial_lr", group["lr"]) if initial else group["lr"])
        for group in optimizer.param_groups
    }


def log_stage(run: TrainingRun, stage: StagePlan, stage_index: int, optimization: StageOptimization) -> None:
    trainable = sum(p.numel() for p in run.created.model.parameters() if p.requires_grad)
    lrs = _group_lrs(optimization.optimizer, initial=True)
    log.info("stage %s: %d epochs, %d trainable parameters, lr %s", stage.name, stage.epochs, trainable, lrs)
    run.board.log_stage(stage.name, len(run.history) + 1, lrs)


def run_epoch(
    run: TrainingRun, stage: StagePlan, epoch: int, optimization: StageOptimization
) -> dict[str, Any]:
    """Train one epoch, evaluate on the validation set, record both; the validation metrics."""
    global_epoch = len(run.history) + 1
    # Shuffle order depends on the epoch alone, so a resumed run sees the batches it would have.
    run.generator.manual_seed(run.config.seed * 10_000 + global_epoch)
    run.board.epoch_started()
    stats = train_one_epoch(
        run.created,
        run.train_loader,
        optimization.optimizer,
        optimization.scheduler,
        optimization.scaler,
        run.criterion,
        run.device,
        run.config.amp,
        f"{stage.name} epoch {epoch + 1}/{stage.epochs}",
        freeze_bn_stats=run.created.pretrained and run.config.freeze_bn_stats,
        board=run.board,
    )
    run.speeds.append(stats.images_per_s)
    val, _, _ = evaluate(run.created, run.val_loader, run.device, run.config.amp, run.split.classes)
    run.history.append(
        {
            "epoch": global_epoch,
            "stage": stage.name,
            "train_loss": stats.loss,
            "train_top1": stats.top1,
            "val_loss": val["log_loss"],
            "val_top1": val["top1"],
            "lr": optimization.scheduler.get_last_lr(),
            "train_images_per_s": stats.images_per_s,
        }
    )
    run.board.log_epoch(
        global_epoch,
        0 if stage.name in ("head", "full") else 1,
        {"loss": stats.loss, "top1": stats.top1, "images_per_s": stats.images_per_s},
        val,
        run.created.model,
    )
    return val


def save_epoch(
    run: TrainingRun,
    stage_index: int,
    epoch: int,
    val: dict[str, Any],
    optimization: StageOptimization,
    done: bool,
) -> None:
    """``best.pt`` on a new best validation loss; ``last.pt`` (resumable) and history.json always."""
    output_dir = run.config.output_dir

    def payload(**fields: Any) -> dict[str, Any]:
        common: dict[str, Any] = {"history": run.history, "best_val_loss": run.best_val_loss}
        return checkpoint_payload(run.created, run.config, run.split, **common, **fields)

    if val["log_loss"] < run.best_val_loss:
        run.best_val_loss = val["log_loss"]
        save_checkpoint(
            payload(stage_index=stage_index, epoch_in_stage=epoch + 1, metrics=summary_metrics(val)),
            output_dir / BEST_CHECKPOINT,
        )
    resumable: dict[str, Any] = (
        {}
        if done
        else {
            "optimizer": optimization.optimizer,
            "scheduler": optimization.scheduler,
            "scaler": optimization.scaler,
            "stopper": optimization.stopper,
        }
    )
    save_checkpoint(
        payload(
            stage_index=stage_index + 1 if done else stage_index,
            epoch_in_stage=0 if done else epoch + 1,
            **resumable,
        ),
        output_dir / LAST_CHECKPOINT,
    )
    (output_dir / "history.json").write_text(json.dumps(run.history, indent=1) + "\n")


def finish_run(run: TrainingRun) -> TrainResult:
    """Evaluate the best checkpoint on the validation set; write metrics.json, the plots, and the
    PR curves and hyperparameters to TensorBoard."""
    config, created, history = run.config, run.created, run.history
    best_path = config.output_dir / BEST_CHECKPOINT
    best = load_checkpoint(best_path)
    created.model.load_state_dict(best["model_state"])
    metrics, probabilities, targets = evaluate(
        created, run.val_loader, run.device, config.amp, run.split.classes, "evaluate best"
    )
    metrics["best_epoch"] = int(np.argmin([h["val_loss"] for h in history]) + 1) if history else None
    best["metrics"] = summary_metrics(metrics)
    save_checkpoint(best, best_path)
    (config.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (config.output_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    if history:
        plot_history(history, config.output_dir / "history.png")
    plot_confusion_matrix(
        metrics["confusion_matrix"],
        run.split.classes,
        config.output_dir / "confusion_matrix.png",
        f"{created.arch}: validation, top-1 {metrics['top1']:.3f}",
    )
    run.board.log_best(probabilities, targets, metrics["best_epoch"] or 0)
    run.board.log_hparams(config.to_json(), metrics)
    speed = float(np.median(run.speeds)) if run.speeds else 0.0
    log.info("best epoch %s: %s", metrics["best_epoch"], headline(metrics))
    return TrainResult(config.output_dir, best_path, metrics, history, speed)


# --------------------------------------------------------------------------------------------
# learning-rate sweep


@dataclass
class LrSweep:
    lrs: list[float]
    losses: list[float]
    suggested_lr: float | None


def run_lr_find(
    config: TrainConfig,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_steps: int = 100,
    smoothing: float = 0.9,
) -> LrSweep:
    """One exponential sweep of the learning rate over training batches (Smith, 2015; fastai's lr_find).

    Trains what stage 1 trains (the head of a pretrained model, everything otherwise); stops
    when the smoothed loss exceeds 4x its minimum. Suggests the rate of steepest descent.
    """
    seed_everything(config.seed)
    device = resolve_device(config.device)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    split = load_dataset_split(config.data_dir, config.val_ratio, config.seed)
    created = create_model(
        config.arch, len(split.classes), config.weights, config.crop_size, config.resize_size
    )
    created.model.to(device)
    train_loader, _, _ = create_loaders(split, created.preprocessing, config)
    stage = plan_stages(created, config)[0]
    groups = apply_stage(created, stage)
    for group in groups:
        group["lr"] = min_lr
    optimizer = create_optimizer(groups, config)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    gamma = (max_lr / min_lr) ** (1 / max(1, num_steps - 1))
    mean, std = mean_std_tensors(created.preprocessing, device)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed, best = 0.0, math.inf
    set_train_mode(created, created.pretrained and config.freeze_bn_stats)
    batches = iter(train_loader)
    for step in tqdm(range(num_steps), desc="lr sweep", unit="step", dynamic_ncols=True):
        try:
            pixels, targets = next(batches)
        except StopIteration:
            batches = iter(train_loader)
            pixels, targets = next(batches)
        lr = min_lr * gamma**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = criterion(created.model(normalize_uint8(pixels.to(device), mean, std)), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        smoothed = smoothing * smoothed + (1 - smoothing) * loss.item()
        debiased = smoothed / (1 - smoothing ** (step + 1))
        lrs.append(lr)
        losses.append(debiased)
        best = min(best, debiased)
        if not math.isfinite(debiased) or debiased > 4 * best:
            break
    suggested = suggest_lr(lrs, losses)
    plot_lr_sweep(lrs, losses, suggested, config.output_dir / "lr_find.png")
    (config.output_dir / "lr_find.json").write_text(
        json.dumps({"lrs": lrs, "losses": losses, "suggested_lr": suggested}, indent=1) + "\n"
    )
    return LrSweep(lrs, losses, suggested)


def suggest_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The rate where the smoothed loss falls fastest (per log-lr), before it diverges."""
    if len(lrs) < 5:
        return None
    end = int(np.argmin(losses)) + 1
    if end < 3:
        return None
    slopes = np.gradient(np.asarray(losses[:end]), np.log10(np.asarray(lrs[:end])))
    return float(lrs[int(np.argmin(slopes))])
