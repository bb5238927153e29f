"""Leak test (short version; `cmlearn bench` runs 200 -> 2,000 steps): resident memory of a
real training run must not grow between two late marks, and an injected leak is caught."""

from __future__ import annotations

from cmlearn.leaks import BOUND_MIB, memory_growth
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
