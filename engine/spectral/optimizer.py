"""One spectral optimizer: momentum, then a spectral map on each matrix, then a scaled step.

Muon, Freon(c), Kaon and TruncatedSGD differ only in the map they are given (and Freon in its
mean-Schatten normalisation); the update rule is :func:`spectral_direction`. The momentum and
step arithmetic follow ``torch.optim.Muon`` exactly (EMA buffer via ``lerp``, Nesterov as
``grad.lerp(buf, μ)``, decay by the unscaled lr), so Muon configured like it matches it bit for
bit; see tests/engine/test_spectral_optimizer.py. The one deliberate difference: a momentum
with ‖M‖_F below Muon's eps = 1e-7 is normalised like any other (torch leaves it, ≈ 0 out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from approximant.engine.errors import MapError
from approximant.engine.spectral import get_map
from approximant.engine.spectral.common import pow2_exponent, scale_pow2

SHAPE_SCALES = ("original", "match_rms_adamw", "none")
NONFINITE = ("raise", "propagate")


def shape_scale(rows: int, cols: int, mode: str) -> float:
    """Step multiplier for a rows×cols matrix (same floats as ``torch.optim.Muon``).

    "original": √max(1, rows/cols) (Keller); "match_rms_adamw": 0.2·√max(rows, cols)
    (Moonlight, lets the AdamW lr be reused); "none": 1.
    """
    if mode == "original":
        return math.sqrt(max(1, rows / cols))
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if mode == "none":
        return 1.0
    raise ValueError(f"shape_scale: must be one of {', '.join(SHAPE_SCALES)} (got {mode!r})")


@dataclass(frozen=True)
class ConfiguredMap:
    """A registered spectral map with its options bound: ``D = cmap(M, generator)``.

    ``prescale`` divides M by its Frobenius norm first, which makes options such as Freon's
    floor δ relative (scale-free) without a device sync; the power maps are homogeneous, so
    the direction is unchanged up to a positive factor, which normalisation removes.
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()
    prescale: bool = False

    def __post_init__(self) -> None:
        get_map(self.name)  # fail at configuration, not at the first step

    @property
    def random(self) -> bool:
        return get_map(self.name).random

    def warm(self, shape: tuple[int, ...]) -> None:
        """Precompute whatever a call on ``shape`` will look up (Freon's schedules)."""
        w = get_map(self.name).warm
        if w is not None:
            w(shape, **dict(self.options))

    def __call__(self, M: Tensor, generator: torch.Generator | None = None) -> Tensor:
        opts = dict(self.options)
        if self.random:
            opts["generator"] = generator
        return get_map(self.name).fn(M, **opts)


def configure_map(name: str, prescale: bool = False, **options: Any) -> ConfiguredMap:
    """Bind ``options`` to registered map ``name`` (checked now; options at the first call)."""
    return ConfiguredMap(name, tuple(sorted(options.items())), prescale)


def schatten_normalise(M: Tensor, D: Tensor, c: float, floor: float = 0.0) -> Tensor:
    """Freon's scale: turn ``D = U Σ^(q−1) Vᵀ`` into ``U (Σ/M_q)^(q−1) Vᵀ``, q = 2(1 − c).

    ``M_q = (mean σᵢ^q)^(1/q)`` over the r = min(m, n) singular values of M, read off as
    ``⟨M, D⟩ / r`` without an SVD; at q = 0 the geometric mean, from ``log det(MMᵀ + floor²I)``
    in fp64 (the floor keeps it finite on rank-deficient M). A zero M returns D unchanged.
    ``M`` and ``D`` may be 3-D batches: each matrix gets its own scale.
    """
    q = 2.0 * (1.0 - c)
    rows, cols = M.shape[-2], M.shape[-1]
    r = min(rows, cols)
    if q > 0:
        if q == 1.0:
            return D  # c = ½: (Σ/M_1)^0, nothing to scale
        inner = (M.to(torch.float64) * D.to(torch.float64)).sum(dim=(-2, -1), keepdim=True) / r
        safe = torch.where(inner > 0, inner, torch.ones_like(inner))
        factor = torch.where(inner > 0, safe.pow((1.0 - q) / q), torch.ones_like(inner))
        return D * factor.to(D.dtype)
    W = M.to(torch.float64)
    W = W @ W.mT if rows <= cols else W.mT @ W
    W = W + floor * floor * torch.eye(r, dtype=W.dtype, device=W.device)
    _, logdet = torch.linalg.slogdet(W)
    geo = torch.exp(logdet / (2 * r))[..., None, None]
    return D * torch.where(torch.isfinite(geo), geo, torch.ones_like(geo)).to(D.dtype)


def spectral_direction(
    M: Tensor,
    spectral_map: Callable[..., Tensor],
    *,
    schatten_c: float | None = None,
    schatten_floor: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The update rule: ``D = map(M)``, then the mean-Schatten normalisation if requested.

    ``M`` is a 2-D momentum matrix or a 3-D batch of same-shaped ones (each treated on its
    own); the result is in the map's working dtype. A map configured with ``prescale`` sees
    ``M/‖M‖_F`` (and so does the normalisation, keeping it consistent).
    """
    if getattr(spectral_map, "prescale", False):
        # A power of two first (exact: the same bits in the normal range), so that ‖M‖_F
        # neither overflows (a 1e30 fp32 gradient gave a zero update) nor underflows (at 1e-30
        # the "unit" momentum had norm 1e8 and the relative floor vanished).
        M = scale_pow2(M, -pow2_exponent(M))  # a new tensor: divided in place below
        norm = M.norm(dim=(-2, -1), keepdim=True)
        M = M.div_(norm.clamp_min(torch.finfo(M.dtype).tiny))
    try:
        D = (spectral_map(M, generator) if isinstance(spectral_map, ConfiguredMap)
             else spectral_map(M))
    except (torch.linalg.LinAlgError, MapError):
        # Factorisation-based maps (QR/Cholesky/eigh/SVD) refuse NaN/inf input where matmul
        # maps pass it on. A non-finite momentum is the "propagate" case: hand NaN on so the
        # training loop records a divergence, as it would for Newton–Schulz; a finite one
        # that fails is a real error and is raised.
        if bool(torch.isfinite(M).all()):
            raise
        return torch.full_like(M, float("nan"))
    if schatten_c is not None:
        D = schatten_normalise(M, D, schatten_c, schatten_floor)
    return D


# Batching same-shaped matrices into one 3-D map call saves per-call overhead, which dominates
# for small matrices; for large ones the stacking copy and CPU batched GEMM cost more than they
# save. Measured on the 2-core development CPU (Newton–Schulz ×5, 4 matrices, batched/loop):
# 0.55–0.65× up to 128², 0.91× at 256², 1.00–1.2× from 256×1024 up (bf16 and fp32 alike).
# On CUDA one launch per group is what batching is for, so "auto" batches every size there.
BATCH_MAX_NUMEL_CPU = 256 * 256
BATCHING = ("auto", "always", "never")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)} (got {value!r})")


class SpectralOptimizer(torch.optim.Optimizer):
    """Spectral update on matrix parameters: ``θ ← (1 − lr·wd) θ − lr·s(shape)·D(momentum)``.

    Args:
        params: matrices (≥ 2-D; conv filters are reshaped to (out, in·kh·kw)). 0-/1-D
            parameters raise ``ValueError``: route them to AdamW (see engine/optimizers.py).
        spectral_map: a :class:`ConfiguredMap` or any callable ``M ↦ D``.
        lr: step in units of the map's output (spectral norm ≈ 1 for polar maps).
        momentum, nesterov: EMA momentum ``buf ← μ buf + (1 − μ) g``; Nesterov feeds
            ``(1 − μ) g + μ buf`` to the map (torch.optim.Muon's convention).
        weight_decay: decoupled, multiplied by the unscaled lr.
        shape_scale: "original" | "match_rms_adamw" | "none" (see :func:`shape_scale`).
        schatten_c: apply Freon's mean-Schatten normalisation for exponent c (None: off).
        schatten_floor: δ in the q = 0 geometric mean (c = 1).
        nonfinite: "raise" checks every gradient (one host sync per step) and raises
            ``ValueError`` naming the parameter; "propagate" skips the check, so NaN/inf flows
            into the parameters and the training loop records the run as diverged.
        seed: seeds the generator of random maps (Kaon i.i.d.); saved in ``state_dict``.
        batch: "auto" stacks same-shaped (and same dtype/device) matrices of a parameter group
            into one 3-D call of a registry map where that was measured to pay (every size on
            CUDA, up to ``BATCH_MAX_NUMEL_CPU`` elements on CPU); "always" does it for any
            size and for plain callables too (which must then accept 3-D input); "never" calls
            once per matrix. Results equal the per-matrix ones up to float reassociation (to
            1e-12 in fp64 in the tests; bit for bit for Newton–Schulz, which the Muon test
            checks against torch.optim.Muon). Random maps are never batched, so their draws
            keep the parameter order.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        spectral_map: Callable[..., Tensor],
        *,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        shape_scale: str = "original",
        schatten_c: float | None = None,
        schatten_floor: float = 0.0,
        nonfinite: str = "raise",
        seed: int = 0,
        batch: str = "auto",
    ) -> None:
        if not (isinstance(lr, int | float) and lr >= 0):
            raise ValueError(f"lr: must be >= 0 (got {lr!r})")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum: must be in [0, 1) (got {momentum})")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay: must be >= 0 (got {weight_decay})")
        _one_of("shape_scale", shape_scale, SHAPE_SCALES)
        if schatten_c is not None and not 0 <= schatten_c <= 1:
            raise ValueError(f"schatten_c: must be in [0, 1] (got {schatten_c})")
        if not schatten_floor >= 0:
            raise ValueError(f"schatten_floor: must be >= 0 (got {schatten_floor})")
        _one_of("nonfinite", nonfinite, NONFINITE)
        _one_of("batch", batch, BATCHING)
        if not callable(spectral_map):
            raise ValueError("spectral_map: must be callable (a ConfiguredMap or M -> D)")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        shape_scale=shape_scale)
        super().__init__(params, defaults)  # raises ValueError on an empty parameter list
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if p.ndim < 2:
                    raise ValueError(
                        f"params[{i}]: spectral updates need a matrix (got shape "
                        f"{tuple(p.shape)}); route biases and gains to AdamW"
                    )
                if torch.is_complex(p):
                    raise ValueError(f"params[{i}]: complex parameters are not supported")
        self.spectral_map = spectral_map
        if isinstance(spectral_map, ConfiguredMap):
            for group in self.param_groups:
                for p in group["params"]:
                    spectral_map.warm((p.shape[0], p[0].numel()))
        self.schatten_c = schatten_c
        self.schatten_floor = schatten_floor
        self.nonfinite = nonfinite
        self.batch = batch
        self.generator = torch.Generator().manual_seed(seed)

    def _check_finite(self) -> None:
        grads = [(i, p) for g in self.param_groups for i, p in enumerate(g["params"])
                 if p.grad is not None]
        if not grads:
            return
        flags = torch.stack([torch.isfinite(p.grad).all() for _, p in grads])
        if bool(flags.all()):  # one host sync for all parameters
            return
        bad = [(i, tuple(p.shape)) for (i, p), ok in zip(grads, flags.tolist(), strict=True)
               if not ok]
        raise ValueError(f"gradient contains NaN or inf for parameters (index, shape) {bad}")

    def _batchable(self, M: Tensor) -> bool:
        if self.batch == "never" or getattr(self.spectral_map, "random", False):
            return False
        if self.batch == "always":
            return True
        # "auto": registry maps all take 3-D batches; an arbitrary callable may not.
        if not isinstance(self.spectral_map, ConfiguredMap):
            return False
        return M.device.type != "cpu" or M.numel() <= BATCH_MAX_NUMEL_CPU

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.nonfinite == "raise":
            self._check_finite()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise ValueError("sparse gradients are not supported")
            for p, grad in zip(params, grads, strict=True):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(
                        grad, memory_format=torch.preserve_format)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            # The same per-element arithmetic as torch.optim.Muon's lerp_/lerp, fused over the
            # group (foreach kernels round exactly as the per-tensor ones).
            mu = group["momentum"]
            torch._foreach_lerp_(bufs, grads, 1 - mu)
            updates = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
            mats = [u.reshape(u.shape[0], -1) for u in updates]  # (out, in·k…); views for 2-D
            for idx in self._batches(mats):
                self._apply(group, [params[i] for i in idx], [mats[i] for i in idx])
        return loss

    def _batches(self, mats: list[Tensor]) -> list[list[int]]:
        """Indices of ``mats`` grouped into map calls, in first-appearance order."""
        calls: dict[object, list[int]] = {}
        for i, M in enumerate(mats):
            key = (M.shape, M.dtype, M.device) if self._batchable(M) else i
            calls.setdefault(key, []).append(i)
        return list(calls.values())

    def _apply(self, group: dict[str, Any], params: list[Tensor], mats: list[Tensor]) -> None:
        """One map call over same-shaped ``mats`` (stacked if several), then the step."""
        M = mats[0] if len(mats) == 1 else torch.stack(mats)  # (rows, cols) or (k, rows, cols)
        D = spectral_direction(
            M, self.spectral_map, schatten_c=self.schatten_c,
            schatten_floor=self.schatten_floor, generator=self.generator,
        )
        Ds = [D] if len(mats) == 1 else list(D.unbind(0))
        lr, wd = group["lr"], group["weight_decay"]
        scale = shape_scale(M.shape[-2], M.shape[-1], group["shape_scale"])
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, [d.reshape(p.shape) for d, p in zip(Ds, params, strict=True)],
                            alpha=-lr * scale)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["spectral_generator"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        gen = state_dict.pop("spectral_generator", None)
        super().load_state_dict(state_dict)
        if gen is not None:
            self.generator.set_state(gen)
