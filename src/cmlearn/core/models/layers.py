"""Layers whose parameters may carry a leading task dimension, and the shared BatchNorm choice."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C._functorch import TransformType  # private: under_vmap's only dependency
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

PureStep = Callable[[Mapping[str, Tensor], Tensor], Tensor]
BN_MODES = ("transductive", "running")


def task_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight.T + bias`` with a weight shared by all tasks (``[out, in]``) or one per task
    (``[T, out, in]``, inputs ``[T, …, in]``).

    The one definition of ``TaskLinear``'s arithmetic, so that its module forward and its pure
    form (``pure_step``) run the very same kernels and give bit-identical results.
    """
    if weight.dim() == 3:
        if x.dim() == 3:  # [T, n, in], the usual case: no reshaping (a view op and its backward)
            return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        lead = x.shape[1:-1]
        out = torch.baddbmm(bias.unsqueeze(1), x.flatten(1, -2), weight.transpose(1, 2))
        return out.view(x.shape[0], *lead, -1)
    return F.linear(x, weight, bias)


class TaskLinear(nn.Module):
    """A linear layer that also accepts per-task weights ``[T, out, in]`` and inputs ``[T, n, in]``.

    With per-task weights the whole meta-batch runs as one ``baddbmm``: no vmap, no Python loop.
    That is what makes the ``batched`` strategy several times faster than a per-task loop for
    small MLPs. Initialisation matches ``nn.Linear``.
    """

    task_batched = True

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return task_linear(x, self.weight, self.bias)


def tlp_init(module: nn.Module) -> None:
    """TLP's initialisation: weights and biases U(±1/√fan_out) (fan_out = the output width)."""
    for layer in module.modules():
        if isinstance(layer, TaskLinear):
            bound = 1.0 / math.sqrt(layer.weight.shape[0])
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound)
                layer.bias.uniform_(-bound, bound)


def output_size(conv: nn.Conv2d, x: Tensor) -> tuple[int, int]:
    """The (H, W) that ``conv`` makes of a batch ``x``."""
    return tuple(
        (x.shape[2 + i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1)
        // conv.stride[i]
        + 1
        for i in range(2)
    )


def matmul_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, conv: nn.Conv2d) -> Tensor:
    """``conv``'s convolution of a batch ``[B, C, H, W]`` as one explicit im2col matmul.

    The same function as ``F.conv2d`` (to rounding), built from ``unfold`` and ``@``, whose
    first and second derivatives are matmuls too.
    """
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [B, C·k·k, L]
    out = weight.flatten(1) @ cols  # [B, O, L]
    if bias is not None:
        out = out + bias[:, None]
    return out.view(x.shape[0], weight.shape[0], *output_size(conv, x))


def under_vmap() -> bool:
    """Whether a ``torch.func.vmap`` is running (at any depth of ``grad`` inside it)."""
    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that, on CPU, runs wide layers at few output pixels as an im2col matmul.

    oneDNN's convolution backward is several times slower than a matmul there: a 640-channel
    3×3 layer on 75 images at 2×2 pixels (ResNet-12's last block and its co-learner at 32 px)
    costs 3.0× as much in a second-order step, 1.8× at 4×4 and 1.3× at 5×5, while at 8×8 and
    beyond, or at Conv-4's 64 channels, oneDNN wins (``cmlearn bench``'s ``conv_paths``
    measures both paths per shape). Under ``vmap`` over tasks the matmul path is slower (the
    ResNet-12 CML step took 1.8× as long), so it is taken only outside it. Parameters, their
    names and the function are ``nn.Conv2d``'s; only the kernels differ, so checkpoints are
    interchangeable.
    """

    matmul_min_channels = 256  # input channels from which the matmul path can pay
    matmul_max_pixels = 25  # output pixels (H·W) up to which it does

    def uses_matmul(self, x: Tensor) -> bool:
        if self.in_channels < self.matmul_min_channels or x.device.type != "cpu":
            return False
        if x.dim() != 4 or self.groups != 1:
            return False
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        out_h, out_w = output_size(self, x)
        return out_h * out_w <= self.matmul_max_pixels and not under_vmap()  # the dearest test

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.uses_matmul(input):
            return matmul_conv2d(input, weight, bias, self)
        return super()._conv_forward(input, weight, bias)


class StepBatchNorm2d(nn.Module):
    """BatchNorm with one row of γ/β per inner step (MAML++'s BNWB), transductive by default.

    ``weight`` and ``bias`` are ``[steps, C]``. The engine passes the row of the current step
    (support pass at step i and the query pass after update i use row i; the final query
    evaluation after N updates uses row N − 1), so the module sees ``[C]`` vectors. Called
    with the full table (outside the engine, e.g. to probe shapes) it uses row 0.

    ``track_running_stats`` adds MAML++'s BNRS (Antoniou et al., ICLR 2019), the paper's
    intent: running
    mean and variance buffers ``[steps, C]``, updated by every training forward (momentum
    0.1) and used to normalise in ``eval()`` mode. The engine passes their row of the step as
    it does γ/β (a view, so the update lands here), which needs the ``loop`` strategy. The
    released code never normalises with them (transductive), hence the default.
    """

    per_step = True

    def __init__(
        self,
        channels: int,
        steps: int,
        eps: float = 1e-5,
        *,
        track_running_stats: bool = False,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.track_running_stats = track_running_stats
        self.weight = nn.Parameter(torch.ones(steps, channels))
        self.bias = nn.Parameter(torch.zeros(steps, channels))
        running = track_running_stats
        self.register_buffer("running_mean", torch.zeros(steps, channels) if running else None)
        self.register_buffer("running_var", torch.ones(steps, channels) if running else None)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight, self.bias
        mean, var = self.running_mean, self.running_var
        if w.dim() == 2:
            w, b = w[0], b[0]
        if mean is not None and mean.dim() == 2:
            mean, var = mean[0], var[0]
        batch = self.training or mean is None
        return F.batch_norm(x, mean, var, w, b, batch, self.momentum, self.eps)


def norm(channels: int, bn: str = "transductive", bn_steps: int = 0) -> nn.Module:
    """The BatchNorm of every conv backbone and conv co-learner, so they agree on its meaning.

    ``bn="transductive"`` normalises every forward pass with its own batch statistics (the
    paper's and every reference implementation's behaviour); ``"running"`` tracks running
    statistics and uses them in ``eval()`` mode. ``bn_steps > 0`` gives MAML++'s per-step
    γ/β (``StepBatchNorm2d``): with ``"transductive"`` batch statistics, as MAML++'s released
    code in effect normalises; with ``"running"`` also per-step running statistics (BNRS, the
    paper's intent). γ starts at 1 and β at 0 in every case.
    """
    if bn not in BN_MODES:
        raise ValueError(f"unknown BatchNorm mode {bn!r}; choose from {', '.join(BN_MODES)}")
    if bn_steps:
        return StepBatchNorm2d(channels, bn_steps, track_running_stats=bn == "running")
    return nn.BatchNorm2d(channels, track_running_stats=bn == "running")


def pure_step(module: nn.Module, prefix: str) -> PureStep | None:
    """``module``'s forward as a function of a parameter dict, or None where it has no pure form.

    ``params[prefix + name]`` replaces the module's parameter ``name``; a name absent from the
    dict is the module's own parameter, read at call time, exactly as ``functional_call``
    treats it, but without swapping tensors into the module and back on every call (a fifth
    of a sinusoid MLP's meta-step at meta-batch 4). Known exact types only (``TaskLinear``,
    ``nn.ReLU``, ``nn.Sequential`` of them): a subclass may override ``forward``. Hooks are
    not run: ``Cooperative.pure_forward`` hands a hooked model to ``functional_call``.
    """
    kind = type(module)
    if kind is nn.ReLU and not module.inplace:
        return lambda params, x: torch.relu(x)
    if kind is TaskLinear:
        w, b = prefix + "weight", prefix + "bias"

        def linear(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
            weight = params[w] if w in params else module.weight
            return task_linear(x, weight, params[b] if b in params else module.bias)

        return linear
    if kind is nn.Sequential:
        steps: list[PureStep] = []
        for name, child in module.named_children():
            step = pure_step(child, f"{prefix}{name}.")
            if step is None:
                return None
            steps.append(step)

        def chain(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
            for layer in steps:
                x = layer(params, x)
            return x

        return chain
    return None
