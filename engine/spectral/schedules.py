"""Newton–Schulz coefficient schedules, kept as frozen data with their generating parameters.

A schedule is a list of odd quintics ``p(x) = a x + b x³ + c x⁵``, one row per step, applied to the
singular values of ``X₀ = G / (‖G‖_F · norm_safety)``. Nothing here is computed at import: every
table is literal data. ``tests/engine/test_spectral_schedules.py`` regenerates the tables that
have a closed form or a reproducible generator (classical: Taylor series; CANS: greedy Remez) and
checks the documented behaviour of the others (Keller; Polar Express, whose pinned rows do not
follow from the greedy recursion with a plain (1 + ε) safety factor, so they stay pinned data).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NSSchedule:
    """One named Newton–Schulz schedule.

    ``rows`` holds ``(a, b, c)`` per step; when a caller asks for more steps than rows, the last
    row repeats (so a one-row schedule is a fixed polynomial). ``generator`` names how the rows
    were produced and ``params`` its inputs, so the table can be regenerated and audited.
    """

    name: str
    rows: tuple[tuple[float, float, float], ...]
    generator: str
    params: dict[str, float] = field(default_factory=dict)
    norm_safety: float = 1.0
    convergent: bool = False
    source: str = ""

    def coefficients(self, steps: int) -> list[tuple[float, float, float]]:
        """The ``steps`` rows actually applied (the last row repeats past the table's end)."""
        if steps < 1:
            raise ValueError(f"steps: must be >= 1 (got {steps})")
        return [self.rows[min(i, len(self.rows) - 1)] for i in range(steps)]


KELLER = NSSchedule(
    name="keller",
    rows=((3.4445, -4.7750, 2.0315),),
    generator="fixed quintic maximising the slope at 0 (hand-tuned, KellerJordan/Muon)",
    params={"steps": 5},
    convergent=False,
    source="KellerJordan/Muon muon.py; torch.optim.Muon defaults",
)

CLASSICAL = NSSchedule(
    name="classical",
    rows=((15 / 8, -10 / 8, 3 / 8),),
    generator="degree-5 Newton–Schulz: Taylor expansion of (1 - (1 - x²))^(-1/2) to second order",
    params={"order": 2},
    convergent=True,
    source="Higham, Functions of Matrices (2008), §8.3",
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
    generator="per-step minimax odd quintic on [l, u]; l <- p(l), u <- 2 - l; safety (1 + eps) "
    "baked into every row but the last",
    params={"lower": 1e-3, "upper": 1.0, "eps": 0.01, "steps": 8},
    norm_safety=1.01,
    convergent=True,
    source="Amsel et al. 2025 (Polar Express), table pinned in SCIENCE.md",
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
