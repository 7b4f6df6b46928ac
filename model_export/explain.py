"""Class activation maps computed inside the exported graph, and the same maps in plain PyTorch.

Two methods, each exact for the heads it accepts and refused for any other (a model that
cannot explain is never given a map that only looks like one):

- ``cam`` (Zhou et al., CVPR 2016): a head that is global average pooling followed by one
  linear layer (EfficientNet-Lite0, ResNet, EfficientNet, RegNet, ...). The map of class k is
  the pooled feature map weighted by row k of the linear layer: ``sum_c W[k, c] F[c, y, x]``.
  Its spatial mean plus ``b[k]`` is the logit, so the map is that logit spread over the grid.
  :func:`find_cam_layers` accepts a model only when that identity holds on a real forward pass.
- ``grad-cam`` (Selvaraju et al., ICCV 2017) for the stage's own :class:`SimpleCNN`, whose head
  is flatten -> linear -> ReLU -> dropout -> linear. The gradient of logit k with respect to
  the last feature map is ``(W2[k] * relu'(h)) @ W1`` reshaped to the map; Grad-CAM weighs each
  channel by that gradient's spatial mean, which is ``(W2[k] * relu'(h)) @ mean_s(W1)``: a
  64 x 64 product per class, cheaper than the head itself. The map is ``relu(sum_c a_c F_c)``.

Both are computed for the ``top_k`` most probable classes of each image, at the feature map's
resolution (7 x 7 for a 224 crop), and normalised per map to [0, 1] (min-max; a flat map is 0).
The graph outputs them as ``cam`` [N, K, h, w] and the class of each map as ``cam_classes``
[N, K] (int64), most probable first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .models import SimpleCNN

ExplainMethod = Literal["cam", "grad-cam"]
EXPLAIN_TOP_K = 5
CAM_OUTPUT = "cam"
CAM_CLASSES_OUTPUT = "cam_classes"
# Below this range a map is flat: it normalises to 0 rather than to noise.
FLAT_RANGE = 1e-12
# How closely the head must be pooling + linear on a real forward pass (fp32 rounding only).
_HEAD_IDENTITY_RTOL = 1e-4


class ExplainError(ValueError):
    """The model's head is not one this module can explain exactly."""


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max over each map's cells ([..., h, w]) to [0, 1]; a flat map becomes 0."""
    flat = maps.flatten(-2)
    low = flat.amin(dim=-1, keepdim=True)
    span = (flat.amax(dim=-1, keepdim=True) - low).clamp(min=FLAT_RANGE)
    return ((flat - low) / span).reshape(maps.shape)


@dataclass(frozen=True)
class CamLayers:
    """Where a pooling + linear head starts: the module whose output is the feature map that is
    pooled, and the linear layer whose rows weigh it."""

    features: nn.Module
    features_name: str
    linear: nn.Linear
    linear_name: str


def _trace_calls(
    model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[str, str, torch.Tensor]]]:
    """Run ``model`` once; its output and, in order, each submodule's first input ("in", when it
    starts) and output ("out", when it ends), copied before any in-place operation changes them."""
    calls: list[tuple[str, str, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if name == "":
            continue

        def before(_module: nn.Module, args: tuple[object, ...], name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                calls.append((name, "in", args[0].detach().clone()))

        def after(_module: nn.Module, _args: object, output: object, name: str = name) -> None:
            if isinstance(output, torch.Tensor):
                calls.append((name, "out", output.detach().clone()))

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return output, calls


def find_cam_layers(model: nn.Module, example: torch.Tensor) -> CamLayers:
    """The feature module and linear layer of a global-average-pooling + linear head, or
    :class:`ExplainError` saying why the model has none.

    Proven on ``example`` (real images, normalised NCHW), not guessed from names: the last
    linear layer must produce the model's output, and its input must be the spatial mean of
    the 4-D output of a module that ran before it (the last such module is taken).
    """
    model = model.eval()
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ExplainError(f"{type(model).__name__} has no linear layer")
    linear_name, linear = linears[-1]
    logits, calls = _trace_calls(model, example)
    head_inputs = [t for n, kind, t in calls if n == linear_name and kind == "in"]
    if len(head_inputs) != 1 or head_inputs[0].dim() != 2:
        raise ExplainError(f"the last linear layer {linear_name!r} does not run once on a flat input")
    z = head_inputs[0]
    with torch.no_grad():
        if not torch.allclose(linear(z), logits, rtol=_HEAD_IDENTITY_RTOL, atol=1e-5):
            raise ExplainError(
                f"the model's output is not the output of its last linear layer {linear_name!r}"
            )
    head_at = calls.index(next(c for c in calls if c[0] == linear_name))
    for name, kind, tensor in reversed(calls[:head_at]):
        if (
            kind != "out"
            or tensor.dim() != 4
            or tensor.shape[:2] != z.shape
            or tensor.shape[2] * tensor.shape[3] < 2
        ):
            continue
        if torch.allclose(tensor.mean(dim=(2, 3)), z, rtol=_HEAD_IDENTITY_RTOL, atol=1e-5):
            return CamLayers(model.get_submodule(name), name, linear, linear_name)
    raise ExplainError(
        f"the input of {type(model).__name__}'s last linear layer {linear_name!r} is not the global "
        "average of a feature map (the head is not pooling + linear)"
    )


class _FeatureCapture:
    """A forward hook that keeps the last output its module produced."""

    def __init__(self, module: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _args: object, output: torch.Tensor) -> None:
        self.features = output

    def take(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("the feature map was not captured during the forward pass")
        return features


class Explainer(nn.Module):
    """``x -> (logits, maps [N, K, h, w] in [0, 1], classes [N, K])``: what the graph computes."""

    method: ExplainMethod

    def __init__(self, model: nn.Module, top_k: int) -> None:
        super().__init__()
        self.model = model
        self.top_k = top_k

    @property
    def layer(self) -> str:
        """The module whose output is the explained feature map, by name."""
        raise NotImplementedError

    def top_classes(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.topk(self.top_k, dim=-1).indices

    def close(self) -> None:
        """Remove any hook this explainer put on the model."""


class ClassActivationMaps(Explainer):
    """CAM of the ``top_k`` classes for a pooling + linear head (see :func:`find_cam_layers`)."""

    method: ExplainMethod = "cam"

    def __init__(self, model: nn.Module, layers: CamLayers, top_k: int) -> None:
        super().__init__(model, top_k)
        self.linear_weight = layers.linear.weight
        self._layers = layers
        self._capture = _FeatureCapture(layers.features)

    @property
    def layer(self) -> str:
        return f"the output of {self._layers.features_name!r}, weighted by {self._layers.linear_name!r}"

    def close(self) -> None:
        self._capture.handle.remove()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits: torch.Tensor = self.model(x)
        features = self._capture.take()
        classes = self.top_classes(logits)
        weights = self.linear_weight[classes]  # [N, K, C]
        batch, channels, height, width = features.shape
        maps = torch.bmm(weights, features.reshape(batch, channels, height * width))
        return logits, normalise_maps(maps.reshape(batch, -1, height, width)), classes


class SimpleCnnGradCam(Explainer):
    """Grad-CAM of the ``top_k`` classes of a :class:`SimpleCNN`, in closed form (no autograd)."""

    method: ExplainMethod = "grad-cam"

    def __init__(self, model: SimpleCNN, top_k: int) -> None:
        super().__init__(model, top_k)
        first, second = _simple_cnn_linears(model)
        self.first = first
        self.second = second
        last_conv = model.features[-3]
        if not isinstance(last_conv, nn.Conv2d):
            raise ExplainError(f"SimpleCNN's third feature layer from the end is {type(last_conv).__name__}")
        channels = last_conv.out_channels
        side = round((first.in_features / channels) ** 0.5)
        # Grad-CAM needs only the gradient's spatial mean: average W1 over each channel's cells.
        mean_first = first.weight.detach().reshape(first.out_features, channels, side * side).mean(-1)
        self.register_buffer("mean_first_weight", mean_first.clone())

    mean_first_weight: torch.Tensor

    @property
    def layer(self) -> str:
        return "the output of 'features' (after the last max pooling), gradients from 'classifier'"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        assert isinstance(model, SimpleCNN)
        features: torch.Tensor = model.features(x)  # [N, C, s, s]
        # model.classifier, layer by layer (checked by _simple_cnn_linears; dropout is the
        # identity in eval), to keep the hidden activations for relu'(h)
        hidden = self.first(features.flatten(1))
        logits: torch.Tensor = self.second(hidden.relu())
        active = (hidden > 0).to(features.dtype)
        classes = self.top_classes(logits)
        upstream = self.second.weight[classes] * active.unsqueeze(1)  # [N, K, H]
        channel_weights = upstream @ self.mean_first_weight  # [N, K, C]
        batch, channels, height, width = features.shape
        maps = torch.bmm(channel_weights, features.reshape(batch, channels, height * width)).relu()
        return logits, normalise_maps(maps.reshape(batch, -1, height, width)), classes


def _simple_cnn_linears(model: SimpleCNN) -> tuple[nn.Linear, nn.Linear]:
    layers = list(model.classifier.children())
    kinds = [type(layer) for layer in layers]
    if kinds != [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]:
        raise ExplainError(
            f"SimpleCNN's head is {[k.__name__ for k in kinds]}, not flatten-linear-relu-dropout-linear"
        )
    first, second = layers[1], layers[4]
    assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
    return first, second


def create_explainer(model: nn.Module, example: torch.Tensor, top_k: int = EXPLAIN_TOP_K) -> Explainer:
    """The explainer for ``model`` (``top_k`` at most its number of classes), or
    :class:`ExplainError` when its head is neither pooling + linear nor SimpleCNN's."""
    model = model.eval()
    if isinstance(model, SimpleCNN):
        _, second = _simple_cnn_linears(model)
        return SimpleCnnGradCam(model, min(top_k, second.out_features)).eval()
    layers = find_cam_layers(model, example)
    return ClassActivationMaps(model, layers, min(top_k, layers.linear.out_features)).eval()


# -- the reference: the same maps from the module itself, with hooks and autograd ---------------


def reference_maps(
    model: nn.Module, method: ExplainMethod, x: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """The maps of ``classes`` [N, K] computed from ``model`` as the papers define them:
    CAM from the pooled feature map (a hook) and the linear layer's rows; Grad-CAM from
    autograd's gradient of each logit with respect to the last feature map."""
    model = model.eval()
    if method == "cam":
        layers = find_cam_layers(model, x)
        capture = _FeatureCapture(layers.features)
        try:
            with torch.no_grad():
                model(x)
            features = capture.take()
        finally:
            capture.handle.remove()
        weight = layers.linear.weight.detach()
        maps = torch.stack(
            [torch.einsum("kc,chw->khw", weight[classes[i]], features[i]) for i in range(len(x))]
        )
        return normalise_maps(maps)
    if not isinstance(model, SimpleCNN):
        raise ExplainError(f"grad-cam is implemented for SimpleCNN, not {type(model).__name__}")
    out = []
    with torch.enable_grad():
        for i in range(len(x)):
            features = model.features(x[i : i + 1]).detach().requires_grad_(True)
            logits = model.classifier(features)[0]
            rows = []
            for k in classes[i].tolist():
                (gradient,) = torch.autograd.grad(logits[k], features, retain_graph=True)
                weights = gradient[0].mean(dim=(1, 2))  # [C]
                rows.append(torch.relu((weights[:, None, None] * features[0].detach()).sum(0)))
            out.append(torch.stack(rows))
    return normalise_maps(torch.stack(out)).detach()
