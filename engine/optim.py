"""The spectral optimizers as ``torch.optim.Optimizer`` classes, for a training script of your own.

    from approximant import Freon
    hidden = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    opt = Freon(hidden, lr=0.02, c=2 / 3)

Each takes matrices only (≥ 2-D; conv filters are flattened to (out, in·kh·kw)), like
``torch.optim.Muon``: embeddings, the output head, biases and norm gains belong to AdamW (the
Muon convention; the built-in workloads route them so). The defaults are those of the study form,
read from the registry's parameter models (engine/optimizers.py), and a value out of range raises
``ValueError`` naming the argument and what is allowed. ``state_dict`` round-trips, so a script
that checkpoints its optimizer resumes it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import ValidationError
from torch import Tensor

from approximant.engine.errors import format_validation_error
from approximant.engine.optimizers import (
    FreonParams,
    KaonParams,
    MuonParams,
    SpectralParams,
    TruncatedSGDParams,
)
from approximant.engine.spectral.optimizer import SpectralOptimizer

Params = Iterable[Tensor] | Iterable[dict[str, Any]]
ShapeScale = Literal["original", "match_rms_adamw", "none"]


def _validated(model: type[SpectralParams], options: dict[str, Any]) -> SpectralParams:
    try:
        return model(**options)
    except ValidationError as err:
        raise ValueError(format_validation_error(err)) from None


class _Spectral(SpectralOptimizer):
    """Shared construction: validate the options against the registry's model, build its map."""

    _model: type[SpectralParams]

    def __init__(self, params: Params, nonfinite: str, **options: Any) -> None:
        hp = _validated(self._model, options)
        self.hparams = hp
        super().__init__(params, hp.spectral_map(), nonfinite=nonfinite, **hp.step_options())

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.hparams.model_dump().items()
                          if not k.startswith("adamw_"))
        return f"{type(self).__name__}({shown})"


class Muon(_Spectral):
    """Muon: the momentum's polar factor ``U Vᵀ``, approximated by a Newton–Schulz iteration.

    With the defaults the update equals ``torch.optim.Muon``'s (bf16 Newton–Schulz, five Keller
    steps, Nesterov momentum 0.95, step scaled by √max(1, rows/cols)).

    Args:
        params: matrices (or parameter groups of matrices).
        lr: step size (0, 100].
        momentum: EMA momentum in [0, 1).
        nesterov: feed ``(1 − μ) g + μ·buf`` to the iteration instead of the buffer.
        weight_decay: decoupled, multiplied by lr, in [0, 1].
        shape_scale: "original" √max(1, rows/cols) | "match_rms_adamw" 0.2·√max(rows, cols)
            | "none".
        ns_steps: Newton–Schulz steps, 1–20.
        schedule: coefficient table: "keller" | "polar_express" | "cans" | "classical".
        ns_dtype: arithmetic of the iteration: "bfloat16" | "float32".
        nonfinite: "raise" (a NaN/inf gradient raises ValueError naming the parameter) or
            "propagate" (it flows into the weights; one host sync per step fewer).
    """

    _model = MuonParams

    def __init__(self, params: Params, lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, weight_decay: float = 0.0,
                 shape_scale: ShapeScale = "original", ns_steps: int = 5,
                 schedule: Literal["keller", "polar_express", "cans", "classical"] = "keller",
                 ns_dtype: Literal["bfloat16", "float32"] = "bfloat16",
                 nonfinite: Literal["raise", "propagate"] = "raise") -> None:
        super().__init__(params, nonfinite, lr=lr, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, shape_scale=shape_scale, ns_steps=ns_steps,
                         schedule=schedule, ns_dtype=ns_dtype)


class Freon(_Spectral):
    """Freon: the momentum's spectrum raised to a power, ``(M Mᵀ + δ² I)^(−c) M``.

    c = 0 is SGD-momentum's direction, c = ½ Muon's polar factor, c > ½ inverts the spectrum
    (small singular directions get the larger steps). The result is normalised by the mean
    Schatten norm of M, so the step size means the same across c (SCIENCE.md, Freon).

    Args:
        params: matrices (or parameter groups of matrices).
        lr: step size (0, 100].
        c: exponent in [0, 1]; the rational iteration supports 0, ¼, ⅓, ½, ⅔, ¾ and 1.
        method: "rational" (matmul-only iteration), "svd" or "gram_eigh" (exact, any c).
        floor: δ relative to ‖M‖_F, in [0, 0.1]; must be > 0 for c > ½ with "rational".
        dtype: arithmetic of the map: "float32" | "float64".
        momentum, nesterov, weight_decay, shape_scale, nonfinite: as for :class:`Muon`.
    """

    _model = FreonParams

    def __init__(self, params: Params, lr: float = 0.02, c: float = 2 / 3,
                 method: Literal["rational", "svd", "gram_eigh"] = "rational",
                 floor: float = 1e-3, dtype: Literal["float32", "float64"] = "float32",
                 momentum: float = 0.95, nesterov: bool = True, weight_decay: float = 0.0,
                 shape_scale: ShapeScale = "original",
                 nonfinite: Literal["raise", "propagate"] = "raise") -> None:
        super().__init__(params, nonfinite, lr=lr, c=c, method=method, floor=floor, dtype=dtype,
                         momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                         shape_scale=shape_scale)


class Kaon(_Spectral):
    """Kaon: the momentum's singular vectors kept, its singular values replaced by noise.

    "chaos" pushes each singular value through the chaotic map s ← 4.1 s (1 − s²)² (matmuls
    only, the cost of Muon's Newton–Schulz; outputs in [0, 1), not monotone in the input);
    "iid" draws fresh values in [low, high] every step (one SVD per matrix and step).

    Args:
        params: matrices (or parameter groups of matrices).
        lr: step size (0, 100].
        form: "chaos" | "iid".
        steps: chaos iterations, 1–20.
        low, high: "iid" range of the drawn values, 0 < low ≤ high ≤ 10.
        distribution: "uniform" | "loguniform" ("iid").
        seed: seed of the draws (saved in ``state_dict``).
        momentum, nesterov, weight_decay, shape_scale, nonfinite: as for :class:`Muon`.
    """

    _model = KaonParams

    def __init__(self, params: Params, lr: float = 0.02,
                 form: Literal["chaos", "iid"] = "chaos", steps: int = 5, low: float = 0.5,
                 high: float = 1.5,
                 distribution: Literal["uniform", "loguniform"] = "uniform", seed: int = 0,
                 momentum: float = 0.95, nesterov: bool = True, weight_decay: float = 0.0,
                 shape_scale: ShapeScale = "original",
                 nonfinite: Literal["raise", "propagate"] = "raise") -> None:
        super().__init__(params, nonfinite, lr=lr, form=form, steps=steps, low=low, high=high,
                         distribution=distribution, seed=seed, momentum=momentum,
                         nesterov=nesterov, weight_decay=weight_decay, shape_scale=shape_scale)


class TruncatedSGD(_Spectral):
    """SGD-momentum's direction with its largest singular values removed.

    The control for "is it the small directions that help?": the top ``fraction`` of the
    momentum's singular values is set to zero and the rest kept as they are.

    Args:
        params: matrices (or parameter groups of matrices).
        lr: step size (0, 100].
        fraction: share of the singular values zeroed, largest first, in [0, 1).
        momentum: EMA momentum in [0, 1) (default 0.9, SGD's usual value).
        nesterov, weight_decay, nonfinite: as for :class:`Muon`.
        shape_scale: as for :class:`Muon` (default "none", plain SGD steps).
    """

    _model = TruncatedSGDParams

    def __init__(self, params: Params, lr: float = 0.05, fraction: float = 0.1,
                 momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0,
                 shape_scale: ShapeScale = "none",
                 nonfinite: Literal["raise", "propagate"] = "raise") -> None:
        super().__init__(params, nonfinite, lr=lr, fraction=fraction, momentum=momentum,
                         nesterov=nesterov, weight_decay=weight_decay, shape_scale=shape_scale)


PUBLIC: dict[str, type[_Spectral]] = {
    "muon": Muon, "freon": Freon, "kaon": Kaon, "truncated_sgd": TruncatedSGD,
}
