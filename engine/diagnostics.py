"""Alignment and descent potential of the update actually taken (the paper's diagnostics).

Notation (DESIGN.md): ``G̃`` is the mini-batch gradient the optimizer saw, ``G`` the full-data
gradient (the workload's ``full_loss``: the whole training set where affordable, else a large
fixed batch), ``H`` the Hessian of that same loss and ``D`` the update, taken here as the actual
displacement ``D = θ_before − θ_after`` (learning rate, momentum and schedule included), so the
step was ``θ ← θ − 1·D``. Along ``D`` the loss is modelled as
``L(θ − ηD) ≈ L(θ) − η⟨G, D⟩ + ½η²⟨D, HD⟩``, which gives

* alignment ``γ = ⟨G, D⟩ / ⟨G̃, D⟩``,
* descent potential ``Φ = ⟨G̃, D⟩² / ⟨D, HD⟩``,
* optimal step ``η* = γΦ / ⟨G̃, D⟩ = ⟨G, D⟩ / ⟨D, HD⟩``, in units of the step taken: the optimal
  learning rate is ``η*`` times the one used (η* = 1: the step was optimal),
* best one-step decrease ``γ²Φ / 2`` (the model's drop at ``η*``; both left out where
  ``⟨D, HD⟩ ≤ 0``, since the model then has no minimiser), against the predicted change
  at the step taken ``−⟨G, D⟩ + ½⟨D, HD⟩`` and the realised change ``L(θ_after) − L(θ_before)``.

``⟨D, HD⟩`` is an exact Hessian-vector product (double backward), so on a quadratic objective
(the random-feature workload) predicted and realised changes agree to rounding. Aggregates use
the whole update (every trainable parameter); per-matrix figures move that matrix alone
(``⟨D_p, H_pp D_p⟩``) and add the singular values of ``D_p`` (conv filters viewed as
out × in·kh·kw). Computing them restores the parameters bit for bit and touches neither
``.grad``, nor the optimizer, nor any batch generator, so the training trajectory is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from approximant.engine.workloads.base import Task


@dataclass
class Snapshot:
    """Parameters and mini-batch gradients just before the optimizer step."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)))


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


def alignment_figures(gtd_batch: float, gtd_full: float, dhd: float) -> dict[str, float]:
    """γ, Φ, η*, best decrease and predicted change from the three inner products.

    Where the curvature along D is not positive the quadratic model has no minimiser: Φ keeps
    its sign (it shows the negative curvature) but η* and the best decrease are NaN.
    """
    gamma = _ratio(gtd_full, gtd_batch)
    phi = _ratio(gtd_batch**2, dhd)
    convex = dhd > 0
    return {
        "gamma": gamma,
        "phi": phi,
        "eta_opt": _ratio(gamma * phi, gtd_batch) if convex else math.nan,
        "best_decrease": gamma**2 * phi / 2 if convex else math.nan,
        "pred_change": -gtd_full + dhd / 2,
    }


def singular_value_summary(d: torch.Tensor) -> dict[str, float]:
    """Max, median and min singular value and stable rank ‖D‖_F²/‖D‖₂² of ``d`` as a matrix."""
    s = torch.linalg.svdvals(d.detach().float().reshape(d.shape[0], -1))  # (min(m, n),)
    top = float(s[0])
    return {
        "sv_max": top,
        "sv_median": float(s.median()),
        "sv_min": float(s[-1]),
        "stable_rank": _ratio(float(s.pow(2).sum()), top**2),
    }


class Diagnostics:
    """Measures one step: ``snapshot()`` after backward, ``measure()`` after the optimizer."""

    def __init__(
        self,
        task: Task,
        params: list[torch.nn.Parameter],
        names: dict[int, str],
    ) -> None:
        self.task = task
        self.params = params
        ids = {id(p) for p in task.matrix_params}
        self.matrix = [(i, names[id(p)]) for i, p in enumerate(params) if id(p) in ids]

    @torch.no_grad()
    def snapshot(self) -> Snapshot:
        return Snapshot(
            params=[p.detach().clone() for p in self.params],
            grads=[
                torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                for p in self.params
            ],
        )

    def measure(self, snap: Snapshot) -> dict[str, float]:
        """All figures as ``{metric name: value}``; non-finite values are left out."""
        with torch.no_grad():
            after = [p.detach().clone() for p in self.params]
            d = [b - a for b, a in zip(snap.params, after, strict=True)]
            for p, b in zip(self.params, snap.params, strict=True):
                p.copy_(b)
        try:
            out = self._at_before(snap, d)
        finally:
            with torch.no_grad():
                for p, a in zip(self.params, after, strict=True):
                    p.copy_(a)
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
            loss_after = float(self.task.full_loss())
        out["diag_loss_change"] = loss_after - out["diag_full_loss"]
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def _at_before(self, snap: Snapshot, d: list[torch.Tensor]) -> dict[str, float]:
        # The math SDPA backend is the one with a double backward (fused kernels have none).
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            loss = self.task.full_loss()
            grads = torch.autograd.grad(
                loss, self.params, create_graph=True, allow_unused=True, materialize_grads=True
            )
            g = [x.detach() for x in grads]
            gd = sum((x * y).sum() for x, y in zip(grads, d, strict=True))
            hd = torch.autograd.grad(gd, self.params, retain_graph=True, materialize_grads=True)
            out = {"diag_full_loss": float(loss.detach())}
            gtd_batch, gtd_full = _dot(snap.grads, d), _dot(g, d)
            dhd = _dot(hd, d)
            out |= {"diag_gtd_batch": gtd_batch, "diag_gtd_full": gtd_full, "diag_dhd": dhd}
            out |= {f"diag_{k}": v for k, v in alignment_figures(gtd_batch, gtd_full, dhd).items()}
            for i, name in self.matrix:
                if len(self.params) == 1:
                    hd_i = hd[0]  # the aggregate already moved this matrix alone
                else:
                    (hd_i,) = torch.autograd.grad(
                        (grads[i] * d[i]).sum(), self.params[i], retain_graph=True,
                        materialize_grads=True,
                    )
                figs = alignment_figures(
                    _dot([snap.grads[i]], [d[i]]), _dot([g[i]], [d[i]]), _dot([hd_i], [d[i]])
                )
                figs |= singular_value_summary(d[i])
                out |= {f"diag_{k}/{name}": v for k, v in figs.items()}
        return out
