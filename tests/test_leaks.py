"""Leak test (short version; `cmlearn bench` runs 200 -> 2,000 steps): resident memory of a
real training run must not grow between two late marks, and an injected leak is caught."""

from __future__ import annotations

import pytest

from cmlearn import CmlearnError
from cmlearn.app.bench.leaks import BOUND_MIB, memory_growth
from tests.conftest import needs_omniglot


def test_sinusoid_training_does_not_grow():
    result = memory_growth("sinusoid", (100, 600))
    assert result["ok"], result


@needs_omniglot
def test_conv4_training_does_not_grow():
    """Conv-4's larger buffers let the allocator take one more arena now and then between the
    short test's early marks (8.6 MiB once in CI against the 8 MiB bound): one fresh-process
    retry. A leak grows every step, so it fails both runs (the injected one below: 64 MiB)."""
    result = memory_growth("conv4", (30, 200))
    if not result["ok"]:
        result = memory_growth("conv4", (30, 200))
    assert result["ok"], result


def test_an_injected_leak_is_caught():
    result = memory_growth("sinusoid", (100, 600), leak_kib=128)  # as a kept tensor would
    assert not result["ok"] and result["growth_mib"] > 4 * BOUND_MIB, result


def test_a_fresh_process_worker_fails_in_one_line():
    from cmlearn.app.bench.leaks import fresh_json

    assert fresh_json(["-c", "print('noise'); print('{\"a\": 1}')"], "w") == {"a": 1}
    for args, message in (
        (["-c", "pass"], "w failed: no JSON line"),
        (["-c", "raise SystemExit('broken worker')"], "w failed: broken worker"),
        (["-c", "import time; time.sleep(30)"], "w failed: no result after 1 s"),
    ):
        with pytest.raises(CmlearnError, match=message):
            fresh_json(args, "w", timeout=1)
