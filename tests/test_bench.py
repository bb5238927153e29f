"""Smoke tests of the benchmark harness's Omniglot entries: structure, not timings.

The Omniglot data is a tiny fixture written here (six characters in the official zip layout,
with their own Vinyals split files), so the tests need neither the real data nor minutes.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cmlearn.app.bench import suite as bench
from cmlearn.app.runtime import Runtime

CHARACTERS = {  # zip set -> alphabet -> characters; split -> the characters it names
    "background": {"Alpha": ["character01", "character02", "character03", "character04"]},
    "evaluation": {"Beta": ["character01", "character02"]},
}
SPLITS = {
    "train": {"background": {"Alpha": ["character01", "character02"]}},
    "val": {"background": {"Alpha": ["character03", "character04"]}},
    "test": {"evaluation": {"Beta": ["character01", "character02"]}},
}
TINY = ("model.channels=4", "task.meta_batch=2")
OMNIGLOT_RATIOS = (
    "omniglot_step_flop_efficiency",
    "omniglot_step_flop_efficiency_reference",
    "omniglot_engine_speedup",
    "cml_overhead_omniglot",
    "omniglot_sampling_speedup",
    "omniglot_data_time_fraction",
)
GOAL_KEYS = (
    "omniglot_step_flop_efficiency",
    "omniglot_sampling_speedup",
    "omniglot_data_time_fraction",
    "cml_overhead_omniglot",
)


def drawing(rng: np.random.Generator) -> bytes:
    """A 105×105 1-bit PNG with a few random strokes, like an Omniglot drawing."""
    from PIL import Image

    pixels = np.ones((105, 105), dtype=bool)
    for _ in range(3):
        row, col = rng.integers(10, 95, size=2)
        pixels[row - 2 : row + 2, col - 30 : col + 10] = False
        pixels[row - 25 : row + 5, col - 2 : col + 2] = False
    out = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def tiny_omniglot(tmp_path: Path) -> Runtime:
    """A data root with the official layout (20 drawings a character) and split files."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    for name, alphabets in CHARACTERS.items():
        with zipfile.ZipFile(folder / f"images_{name}.zip", "w") as archive:
            for alphabet, chars in alphabets.items():
                for i, char in enumerate(chars):
                    for d in range(1, 21):
                        path = f"images_{name}/{alphabet}/{char}/{i:04d}_{d:02d}.png"
                        archive.writestr(path, drawing(rng))
    splits = folder / "splits" / "vinyals"
    splits.mkdir(parents=True)
    for split, spec in SPLITS.items():
        (splits / f"{split}.json").write_text(json.dumps(spec))
    return Runtime(tmp_path / "data", tmp_path / "cache", torch.device("cpu"))


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_results() -> bench.Results:
    return bench.Results(bench.Plan(1, 0, dict.fromkeys(bench.QUICK_STEPS, 1)))


def test_paired_ratio_is_the_median_of_per_repeat_ratios() -> None:
    res = tiny_results()
    res.rows = [
        {"name": "a", "s_per_step_repeats": [1.0, 4.0, 9.0], "cpu_s_per_step_repeats": [2.0] * 3},
        {"name": "b", "s_per_step_repeats": [1.0, 2.0, 1.0], "cpu_s_per_step_repeats": [4.0] * 3},
    ]
    # separate medians would say 4 / 1 = 4; repeat by repeat the ratios are 1, 2 and 9
    assert res.paired("a", "b") == 2.0
    assert res.paired("a", "b", "cpu") == 0.5
    assert res.paired("b", "a") == 0.5


def positive(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_omniglot_benchmarks_report_every_ratio_and_goal(tiny_omniglot, keep_threads):
    res = tiny_results()
    section = bench.bench_omniglot(
        res, threads=1, quick=True, runtime=tiny_omniglot, overrides=TINY, matmul_n=64
    )
    assert section["status"] == "ok"
    assert section["threads"] == 1 and section["task"]["meta_batch"] == 2
    for key in OMNIGLOT_RATIOS:
        assert positive(res.ratios[key]), (key, res.ratios[key])
        assert positive(section["ratios_by_cpu_time"][key]), key
    assert len(section["paired_ratios"]) == 4
    assert all(positive(v) for v in section["paired_ratios"].values())
    assert all(positive(v) for v in section["kernel_share"].values())
    assert abs(sum(section["kernel_share"].values()) - 1) < 1e-9
    assert 0 < section["flop_efficiency_bound"] < 1
    for key in GOAL_KEYS:
        entry = res.goals[key]
        assert entry["value"] == res.ratios[key] and isinstance(entry["met"], bool)
        assert entry["goal"].startswith(("<=", ">="))
    parts = res.goals["omniglot_step_flop_efficiency"]["parts"]
    assert parts["engine_speedup"]["value"] == res.ratios["omniglot_engine_speedup"]

    names = {r["name"] for r in res.rows}
    assert {"omniglot/engine-loop/maml", "omniglot/engine-loop/cml"} <= names
    assert {"omniglot/reference/maml", "omniglot/sampler/per-image"} <= names
    assert all(positive(r["s_per_step"]) and r["threads"] == 1 for r in res.rows)

    for name, count in section["flops"].items():  # counted, not formulas: both phases
        assert count["total"] == count["objective"] + count["outer_backward"] > 0, name
        assert count["by_op"]["objective"]["aten.convolution"] > 0
        assert count["by_op"]["outer_backward"]["aten.convolution_backward"] > 0
    flops = section["flops"]
    assert flops["engine-loop/maml"]["total"] == flops["reference/maml"]["total"]
    assert flops["engine-loop/cml"]["total"] > flops["engine-loop/maml"]["total"]
    assert section["matmul"]["flops"] == 2 * 64**3
    json.dumps(section)  # the report is plain JSON

    text = "\n".join(bench.omniglot_report(section, res.goals))
    assert "omniglot_sampling_speedup" in text and "GFLOP/s" in text


def test_the_per_image_baseline_gives_the_pools_pixels(tiny_omniglot):
    setup = bench.omniglot_setup(tiny_omniglot, TINY)
    pipeline = bench.PerImagePipeline(setup.data_root, setup.source)
    bench.check_pipeline(pipeline, setup.source)  # raises on any difference
    batch = pipeline.sample(3, bench.random.Random(1))
    assert batch.support_x.shape == (3, 5, 1, 28, 28) and batch.query_x.shape == (3, 25, 1, 28, 28)
    assert batch.support_y.tolist()[0] == [0, 1, 2, 3, 4]


def test_missing_omniglot_is_skipped_with_a_note(tmp_path, keep_threads):
    res = tiny_results()
    runtime = Runtime(tmp_path / "nothing", tmp_path / "cache", torch.device("cpu"))
    section = bench.bench_omniglot(res, threads=1, runtime=runtime, overrides=TINY)
    assert section["status"] == "skipped" and "Omniglot not found" in section["note"]
    assert not res.rows and not any(k in res.ratios for k in OMNIGLOT_RATIOS)
    for key in GOAL_KEYS:
        assert res.goals[key]["met"] is None and res.goals[key]["value"] is None
        assert res.goals[key]["skipped"] == section["note"]
    assert section["note"] in "\n".join(bench.omniglot_report(section, res.goals))


def test_a_variant_can_time_its_own_number_of_steps():
    calls = {"a": 0, "b": 0}

    def counter(name: str):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    variants = [
        bench.Variant("a", counter("a"), 1, {}, torch.get_num_threads()),
        bench.Variant("b", counter("b"), 1, {}, torch.get_num_threads(), steps=5),
    ]
    times = bench.time_interleaved(variants, steps=2, repeats=3, warmup=1)
    assert calls == {"a": 1 + 2 * 3, "b": 1 + 5 * 3}
    assert all(len(t) == 3 for t in times.values())


def test_resnet12_benchmark_compares_equal_meta_losses_and_reports_its_figures(keep_threads):
    """Narrow widths keep it quick; the harness itself refuses to time implementations whose
    meta-losses differ, so reaching the report means engine and reference agreed."""
    from cmlearn.app.bench.resnet import bench as bench_resnet

    out = bench_resnet(quick=True, widths=(4, 4, 8, 8), conv_shapes=((2, 256), (3, 8)))
    assert out["status"] == "ok" and out["best_strategy"] in ("loop", "vmap")
    for key in ("cml_overhead_resnet12", "resnet12_engine_speedup_loop"):
        assert math.isfinite(out["ratios"][key]) and out["ratios"][key] > 0
    memory = out["memory_mib_per_task"]
    assert memory["engine/cml/steps1"] > memory["engine/maml/steps1"]  # ϕ's activations
    assert memory["reference/maml/steps5"] > memory["reference/maml/steps1"]  # 5 graphs kept
    assert out["largest_meta_batch_without_chunks_5_steps"] >= 1
    # ϕ's FLOPs are a fixed cost on the query set: a larger share beside 1 shot than 5
    floor = out["flop_ratio_cml_over_maml"]
    assert floor["shots1"] > floor["shots5"] > 1
    # peak resident growth of fresh processes: at these widths it is the libraries' own
    # first-use memory, so only the full-size bench says what checkpointing saves
    peak = out["peak_mib_cml_5_steps"]
    assert len(peak) == 4 and all(v > 0 for v in peak.values())
    assert set(out["checkpoint_memory_ratio"]) == {"shots1", "shots5"}
    paths = out["conv_paths"]
    assert paths["2x2x256"]["chosen"] == "matmul" and paths["3x3x8"]["chosen"] == "onednn"
    assert all(v["onednn_s"] > 0 and v["matmul_s"] > 0 for v in paths.values())
