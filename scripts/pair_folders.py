"""Pair two ``compare`` folders task by task: what a setting that leaves the test tasks alone
(``task.val_queries``, ``train.patience``, a learning rate) changes, on the same test tasks.

    python scripts/pair_folders.py A B [--methods fomaml,cml] [--seeds 0,1,2,3,4] [--json]

Each folder holds finished runs ``METHOD-sSEED`` (what ``cmlearn compare --out`` writes), read
and scored as ``cmlearn compare --from FOLDER`` reads them (``cmlearn.app.compare.gather_runs`` and
``score_runs``); the two folders must test on the same tasks (checked by their digest). Scores
come from, and go to, each run's score cache, so after ``compare`` this takes no training and,
on the same code, no scoring. (To pool the seeds of several folders of one study, use
``cmlearn compare --from A B`` instead.) Prints per method the seed-averaged
accuracy (or MSE) in A and in B with its 95% CI over tasks, B − A paired, and in each folder
each method minus the first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cmlearn import CmlearnError
from cmlearn.app.compare import gather_runs, score_runs
from cmlearn.app.runtime import Runtime
from cmlearn.app.stats import paired, summarize


def folder_scores(
    folder: Path, methods: list[str], seeds: list[int], runtime: Runtime
) -> tuple[dict[str, np.ndarray], str]:
    """Per method the seed-averaged per-task test scores, and the digest of the test tasks."""
    base, parsed, seeds, runs = gather_runs([folder], methods, seeds, dagger="none")
    scored = score_runs(base, parsed, seeds, runs, runtime, dagger="none")
    return {m: scored.stacks[m].mean(0) for m in methods}, scored.tasks


def pair_folders(
    a: Path, b: Path, methods: list[str], seeds: list[int], runtime: Runtime | None = None
) -> dict:
    runtime = runtime or Runtime()
    (sa, da), (sb, db) = (folder_scores(f, methods, seeds, runtime) for f in (a, b))
    if da != db:
        raise CmlearnError(f"{a} and {b} were tested on different tasks; nothing to pair")
    return {
        "folders": [str(a), str(b)],
        "seeds": seeds,
        "methods": {
            m: {"a": summarize(sa[m]), "b": summarize(sb[m]), "b_minus_a": paired(sb[m], sa[m])}
            for m in methods
        },
        "vs_first": {
            m: {"a": paired(sa[m], sa[methods[0]]), "b": paired(sb[m], sb[methods[0]])}
            for m in methods[1:]
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--methods", default="fomaml,cml")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        report = pair_folders(args.a, args.b, args.methods.split(","), seeds)
    except (CmlearnError, ValueError) as err:
        print(f"pair_folders: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    cell = lambda s: f"{s['mean']:.4f} ± {s['ci95']:.4f}"  # noqa: E731
    print(f"A = {args.a}\nB = {args.b}\n± = 95% CI over the test tasks (seed-averaged per task)")
    for m, row in report["methods"].items():
        print(f"{m:<12} A {cell(row['a'])}   B {cell(row['b'])}   B − A {cell(row['b_minus_a'])}")
    for m, row in report["vs_first"].items():
        print(f"{m} − {args.methods.split(',')[0]}: A {cell(row['a'])}   B {cell(row['b'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
