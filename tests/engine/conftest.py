"""Engine tests run on one torch thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small matrices: one thread is as fast and immune to OpenMP contention on a loaded
    2-core machine (two threads were measured 5–10× slower there); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
