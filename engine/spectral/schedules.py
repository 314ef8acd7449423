"""Newton–Schulz coefficient schedules, kept as frozen data with their generating parameters.

A schedule is a list of odd quintics ``p(x) = a x + b x³ + c x⁵``, one row per step, applied to the
singular values of ``X₀ = G / (‖G‖_F · norm_safety)``. Nothing here is computed at import: every
table is literal data. ``tests/engine/test_spectral_schedules.py`` regenerates every table that
has a generator (classical: Taylor series; CANS and Polar Express: the greedy minimax
composition of engine/spectral/schedule_solvers.py, with Polar Express's cushion and safety
factor) and checks the documented behaviour of Keller's hand-tuned quintic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The relative error one Newton–Schulz step may add to a singular value (the input's norm
# included), with room to spare: bf16/fp16 round every product to 8/11 bits (2^-9 and 2^-12 a
# rounding, three roundings a step), fp32 GEMMs accumulate ≈ √n·eps (4e-6 at n = 4096),
# fp64 ≈ 1e-14. A schedule whose own margin is smaller runs with this one added.
STEP_ROUNDING: dict[torch.dtype, float] = {
    torch.float64: 1e-12, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2,
}


@dataclass(frozen=True)
class NSSchedule:
    """One named Newton–Schulz schedule.

    ``rows`` holds ``(a, b, c)`` per step; when a caller asks for more steps than rows, the last
    row repeats (so a one-row schedule is a fixed polynomial). ``generator`` names how the rows
    were produced and ``params`` its inputs, so the table can be regenerated and audited.

    ``margin``: the largest relative error per step (on every singular value, the normalised
    input included) under which the composed table stays in its band; a greedy minimax table
    without a safety factor maps σ = 1 exactly onto the top of the next step's interval, so
    any upward rounding leaves it and the iteration diverges. Measured by the tests; see
    :meth:`plan` for what happens when a dtype rounds more than that.
    """

    name: str
    rows: tuple[tuple[float, float, float], ...]
    generator: str
    params: dict[str, float] = field(default_factory=dict)
    norm_safety: float = 1.0
    convergent: bool = False
    source: str = ""

    margin: float = 0.0

    def coefficients(self, steps: int) -> list[tuple[float, float, float]]:
        """The ``steps`` rows of the table (the last row repeats past the table's end)."""
        if steps < 1:
            raise ValueError(f"steps: must be >= 1 (got {steps})")
        return [self.rows[min(i, len(self.rows) - 1)] for i in range(steps)]

    def plan(self, steps: int, dtype: torch.dtype
             ) -> tuple[list[tuple[float, float, float]], float]:
        """``(rows, norm_safety)`` to run ``steps`` steps in ``dtype``: the table as it is when
        its margin covers the dtype's rounding (``STEP_ROUNDING``), else with that rounding ρ
        as a safety factor on every row, p(x/(1 + ρ)) (Polar Express's recipe, there on all
        but its last, classical row; a greedy table's last row is as sensitive as the
        others): a singular value pushed up by rounding is still inside the interval its
        row was designed for (CANS in fp32 on a rank-1 512×1024 matrix otherwise ends at
        σ = 3.5, in bf16 at 1e23). The composite moves down by at most ρ relative."""
        rows = self.coefficients(steps)
        rho = STEP_ROUNDING[dtype]
        if self.margin >= rho:
            return rows, self.norm_safety
        k = 1.0 + rho
        return [(a / k, b / k**3, c / k**5) for a, b, c in rows], self.norm_safety


KELLER = NSSchedule(
    name="keller",
    rows=((3.4445, -4.7750, 2.0315),),
    generator="fixed quintic maximising the slope at 0 (hand-tuned, KellerJordan/Muon)",
    params={"steps": 5},
    convergent=False,
    source="KellerJordan/Muon muon.py; torch.optim.Muon defaults",
    margin=4e-2,
)

CLASSICAL = NSSchedule(
    name="classical",
    rows=((15 / 8, -10 / 8, 3 / 8),),
    generator="degree-5 Newton–Schulz: Taylor expansion of (1 - (1 - x²))^(-1/2) to second order",
    params={"order": 2},
    convergent=True,
    source="Higham, Functions of Matrices (2008), §8.3",
    margin=4e-2,
)

CANS = NSSchedule(
    name="cans",
    rows=(
        (8.4703, -25.1081, 18.6293),
        (4.1828, -3.1087, 0.5806),
        (3.9619, -2.9541, 0.5630),
        (3.2866, -2.4647, 0.5074),
        (2.2737, -1.6447, 0.4162),
    ),
    generator="greedy per-step minimax odd quintic (Remez) on [l, u]; l <- p(l), u <- 2 - l; "
    "no safety margin",
    params={"lower": 1e-3, "upper": 1.0, "steps": 5},
    convergent=False,
    source="SCIENCE.md (CANS / greedy minimax on [1e-3, 1])",
    margin=2e-6,
)

POLAR_EXPRESS = NSSchedule(
    name="polar_express",
    rows=(
        (8.2051, -22.9019, 16.4607),
        (4.0664, -2.8612, 0.5184),
        (3.9096, -2.8234, 0.5250),
        (3.2856, -2.4153, 0.4853),
        (2.2779, -1.6198, 0.3985),
        (1.8726, -1.2307, 0.3585),
        (1.8564, -1.2132, 0.3568),
        (1.875, -1.25, 0.375),
    ),
    generator="greedy minimax odd quintic on [max(l, cushion*u), u], rescaled so p(l) + p(u) = 2; "
    "l <- p(l), u <- 2 - l (unscaled p); then every row but the last divided by "
    "(1 + eps)^(1, 3, 5); rows rounded to 4 decimals (a of row 1 truncated: 8.20516 -> 8.2051)",
    params={"lower": 1e-3, "upper": 1.0, "eps": 0.01, "steps": 8,
            "cushion": 0.02407327424182761},
    norm_safety=1.01,
    convergent=True,
    source="Amsel et al. 2025 (Polar Express), table pinned in SCIENCE.md; regenerated by "
    "approximant.engine.spectral.schedule_solvers.greedy_composition",
    margin=1e-2,
)

SCHEDULES: dict[str, NSSchedule] = {s.name: s for s in (KELLER, CLASSICAL, CANS, POLAR_EXPRESS)}


def get_schedule(name: str) -> NSSchedule:
    """The schedule called ``name``; ``ValueError`` lists the allowed names otherwise."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(
            f"schedule: unknown {name!r}; allowed: {', '.join(sorted(SCHEDULES))}"
        ) from None
