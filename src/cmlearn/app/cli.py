"""``cmlearn``: demo | train | eval | compare | analyze | presets | bench | data."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from cmlearn.core.errors import CmlearnError, Interrupted

if TYPE_CHECKING:  # torch loads lazily, inside main(), so Ctrl-C during imports is handled
    from cmlearn.app.config import Config
    from cmlearn.app.runtime import Runtime

DEMO_PRESET = "sinusoid-5shot-cpu"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input on one line (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CmlearnError(message)


def _integer(text: str) -> int:
    """An integer flag as written: ASCII digits (Python's ``int`` also takes ``１２``, ``٣``
    and ``1_000``)."""
    from cmlearn.core.registry import INTEGER

    if not INTEGER.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"expected an integer written with the digits 0-9, got {text!r}"
        )
    return int(text)


def _folder(text: str) -> Path:
    """An output folder; an empty name would be the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder name, got an empty one")
    return Path(text)


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, help="folder holding the datasets (or CMLEARN_DATA)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default: auto)")


def _json(obj: object, indent: int | None = None) -> str:
    """Standard JSON: a non-finite number (an interval of one seed, a diverged loss) is
    ``null``, never the ``NaN`` that strict parsers reject."""
    from cmlearn.app.stats import finite

    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def _runtime(args: argparse.Namespace) -> Runtime:
    from cmlearn.app.runtime import Runtime

    return Runtime.resolve(args.data_root, args.device)


def _parser() -> argparse.ArgumentParser:
    from cmlearn.core.algorithms import ALGORITHMS
    from cmlearn.core.cml import CO_MODES, EVAL_MODES

    p = _Parser(prog="cmlearn", description="Cooperative Meta-Learning (CML) on torch.func")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="train MAML and CML on the sinusoid CPU preset, compare")
    demo.add_argument("--out", type=_folder, default=Path("runs/demo"))
    demo.add_argument("--steps", type=_integer)
    demo.add_argument("--quiet", action="store_true")
    _runtime_args(demo)

    tr = sub.add_parser("train", help="meta-train one run")
    tr.add_argument("--preset")
    tr.add_argument("--algorithm", choices=list(ALGORITHMS))
    tr.add_argument("--colearner", choices=list(CO_MODES))
    tr.add_argument("--model", help="your model by import path, e.g. pkg.mod:Net (model.name)")
    tr.add_argument("--data", help="your data by import path, e.g. pkg.mod:load (data.name)")
    tr.add_argument("--steps", type=_integer)
    tr.add_argument("--seed", type=_integer)
    tr.add_argument("--out", type=_folder)
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    tr.add_argument("--log", choices=["jsonl", "tensorboard"], help="also TensorBoard events")
    tr.add_argument(
        "--nproc", type=_integer, help="train as N processes on this machine (torchrun)"
    )
    tr.add_argument("--quiet", action="store_true")
    _runtime_args(tr)

    ev = sub.add_parser("eval", help="evaluate a run on its seeded test tasks")
    ev.add_argument("run", type=Path)
    ev.add_argument("--mode", choices=list(EVAL_MODES), default="cml")
    ev.add_argument("--tasks", type=_integer)
    ev.add_argument("--steps", type=_integer, help="inner steps at test time")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _runtime_args(ev)

    cp = sub.add_parser("compare", help="train and compare methods on the same test tasks")
    cp.add_argument("--preset", help="train (or reuse) the runs of this preset into --out")
    cp.add_argument(
        "--from",
        dest="folders",
        type=Path,
        nargs="+",
        metavar="FOLDER",
        help="instead of --preset: pair the METHOD-sSEED runs already in these folders "
        "(e.g. an old study and one that adds seeds); nothing is trained",
    )
    cp.add_argument(
        "--like",
        dest="like_run",
        type=Path,
        metavar="RUN",
        help="instead of --preset: train with this run folder's configuration as the base "
        "(e.g. a run of your own model and data written by cmlearn.fit)",
    )
    cp.add_argument("--methods", required=True, help="e.g. maml,cml,anil,anil+cml")
    cp.add_argument("--seeds", help="e.g. 0,1,2 (default: 0; with --from, every common seed)")
    cp.add_argument("--steps", type=_integer)
    cp.add_argument("--tasks", type=_integer)
    cp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cp.add_argument("--out", type=_folder)
    cp.add_argument(
        "--dagger",
        choices=("code", "paper", "none"),
        default="code",
        help="also score co-learner runs with the co-learner (CML†): as the official code "
        "(default) or the paper's Eq. 9 does it, or not",
    )
    cp.add_argument("--json", action="store_true")
    cp.add_argument("--quiet", action="store_true")
    _runtime_args(cp)

    an = sub.add_parser("analyze", help="the paper's Fig. 3 analyses of runs (PNGs + JSON)")
    an.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run or compare folders")
    an.add_argument("--out", type=_folder, help="output folder (default: FIRST_RUN/analysis)")
    an.add_argument("--tasks", type=_integer, help="test tasks for CKA (default: 100)")
    an.add_argument(
        "--logged-only",
        action="store_true",
        help="only what training logged (curves, gradients, L^c): loads no model",
    )
    _runtime_args(an)

    pr = sub.add_parser("presets", help="list the presets")
    pr.add_argument("--json", action="store_true", help="each preset's resolved configuration")
    pr.add_argument("--table", type=_integer, help="only the presets of this paper table (e.g. 3)")
    bench = sub.add_parser("bench", help="speed and memory benchmarks (ratios to a reference)")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--repeats", type=_integer, default=5)
    bench.add_argument("--threads", default="1,2", help="thread counts to compare, e.g. 1,2")
    _data_parser(sub)
    return p


def _data_parser(sub) -> None:
    """``cmlearn data list | check NAME | fetch NAME [--url URL]``."""
    data = sub.add_parser("data", help="list, check and download the datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    ls = dsub.add_parser("list", help="known datasets: present, complete, cached, where")
    ls.add_argument("--json", action="store_true")
    ck = dsub.add_parser("check", help="checksums and class/image counts against the known ones")
    ck.add_argument("name")
    ck.add_argument("--json", action="store_true")
    ck.add_argument("--no-checksums", action="store_true", help="counts only (a repacked copy)")
    fe = dsub.add_parser("fetch", help="download and unpack a dataset (MD5-checked)")
    fe.add_argument("name")
    fe.add_argument("--url", help="a mirror: the file's URL, or a folder URL ending in /")
    fe.add_argument("--quiet", action="store_true")
    for q in (ls, ck, fe):
        q.add_argument("--data-root", type=Path, help="the datasets' folder (or CMLEARN_DATA)")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise CmlearnError(f"{name} must be positive (got {value})")


def _preset_config(
    name: str | None,
    steps: int | None,
    tasks: int | None,
    overrides: list[str],
    run: Path | None = None,
) -> Config:
    """Preset ``name``'s configuration (or run folder ``run``'s) with ``--steps``, ``--tasks``
    and the ``--set`` overrides applied."""
    from cmlearn.app.config import get_preset
    from cmlearn.app.runs import read_config

    _positive("--steps", steps)
    _positive("--tasks", tasks)
    cfg = read_config(run) if run is not None else get_preset(name)
    typed = [("train.steps", steps)] if steps is not None else []
    typed += [("eval.tasks", tasks)] if tasks is not None else []
    return cfg.apply(typed).override(overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from cmlearn.app.runs import read_config
    from cmlearn.app.train import train

    if args.resume:
        if args.out is None:
            raise CmlearnError("--resume needs --out RUN_DIR")
        given = [
            flag
            for flag, value in (
                ("--preset", args.preset),
                ("--algorithm", args.algorithm),
                ("--colearner", args.colearner),
                ("--seed", args.seed),
                ("--model", args.model),
                ("--data", args.data),
            )
            if value is not None
        ]
        if given or args.overrides:
            raise CmlearnError(
                f"--resume continues the run as configured; it takes only --steps and --log "
                f"(got {', '.join(given + ['--set'] * bool(args.overrides))})"
            )
        cfg = read_config(args.out)
        _positive("--steps", args.steps)
        cfg = cfg.apply([("train.steps", args.steps)] if args.steps else [])
        cfg = cfg.apply([("train.log", args.log)] if args.log else [])  # may change on resume
    else:
        if args.preset is None and args.data is None:
            raise CmlearnError(
                "train needs --preset NAME or --data PKG.MOD:NAME (or --out RUN_DIR --resume)"
            )
        if args.preset is None:  # your parts: fit's defaults, so the shell trains what fit does
            from cmlearn.app.config import Config
            from cmlearn.app.fit import experiment

            _positive("--steps", args.steps)
            model = args.model or Config().model.name
            cfg = experiment(model, args.data, **({"steps": args.steps} if args.steps else {}))
        else:
            cfg = _preset_config(args.preset, args.steps, None, [])
            typed = [("data.name", args.data)] if args.data else []
            cfg = cfg.apply(typed + ([("model.name", args.model)] if args.model else []))
        typed = [("algorithm", args.algorithm)] if args.algorithm else []
        typed += [("colearner.mode", args.colearner)] if args.colearner else []
        typed += [("train.seed", args.seed)] if args.seed is not None else []
        typed += [("train.log", args.log)] if args.log else []
        cfg = cfg.apply(typed).override(args.overrides)
    out = args.out or Path("runs") / (
        f"{cfg.preset or 'run'}-{cfg.algorithm}-{cfg.colearner.mode}-s{cfg.train.seed}"
    )
    runtime = _runtime(args)
    if args.nproc is not None:
        from cmlearn.app.distributed import launch

        _positive("--nproc", args.nproc)
        if _world() > 1:
            raise CmlearnError("--nproc starts torchrun itself; leave it out under torchrun")
        if cfg.task.meta_batch < args.nproc:
            raise CmlearnError(
                f"--nproc {args.nproc} splits each meta-batch by task, but task.meta_batch is "
                f"{cfg.task.meta_batch}"
            )
        if args.nproc > 1:
            return launch(args.nproc, args.argv)
    summary = train(
        cfg, out, resume=args.resume, progress=not args.quiet, runtime=runtime, explain=True
    )
    if _rank() == 0:
        print(_json(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cmlearn.app.build import build_source
    from cmlearn.app.config import MAX_EVAL_TASKS
    from cmlearn.app.evaluate import EvalSpec, fixed_tasks, run_scores
    from cmlearn.app.progress import counting
    from cmlearn.app.runs import load_run, read_config
    from cmlearn.app.stats import summarize

    _positive("--tasks", args.tasks)
    _positive("--steps", args.steps)
    if not args.run.exists():
        raise CmlearnError(f"run folder {args.run} does not exist")
    if not args.run.is_dir():
        raise CmlearnError(f"{args.run} is a file; eval takes a run folder")
    if args.tasks is not None and not 2 <= args.tasks <= MAX_EVAL_TASKS:
        raise CmlearnError(
            f"--tasks must be in [2, {MAX_EVAL_TASKS}] (at least 2 for a confidence interval)"
        )
    runtime = _runtime(args)
    source = build_source(read_config(args.run), runtime)  # once: load_run reuses it
    cfg, learner = load_run(args.run, runtime=runtime, source=source)
    n = args.tasks or cfg.eval.tasks
    if n < 2:
        raise CmlearnError("--tasks must be at least 2 for a confidence interval")
    if args.mode not in ("cml", "maml") and learner.net.colearner is None:
        raise CmlearnError(f"--mode {args.mode} needs a run trained with a co-learner")
    tasks = fixed_tasks(source, n, cfg.eval.seed, "test")
    spec = EvalSpec.of(cfg, source.metric, args.mode, args.steps or 0)
    steps = spec.steps
    with counting(n, f"eval {args.mode} on {n} test tasks", not args.quiet):
        # the best checkpoint, or the top-k ensemble (eval.ensemble)
        values = run_scores(args.run, cfg, learner, tasks, spec)
    result = {
        "run": str(args.run),
        "mode": args.mode,
        "metric": source.metric,
        **summarize(values),
        "steps": steps,
        "eval_seed": cfg.eval.seed,
        "ensemble": cfg.eval.ensemble,
    }
    result["n_tasks"] = result.pop("n")
    if args.json:
        print(_json(result))
    else:
        print(
            f"{args.run} [{args.mode}]: test {source.metric} {result['mean']:.4f} ± "
            f"{result['ci95']:.4f} (95% CI, {n} tasks, eval seed {cfg.eval.seed})"
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    given = [args.preset is not None, args.folders is not None, args.like_run is not None]
    if sum(given) != 1:
        raise CmlearnError(
            "compare needs --preset (train) or --from FOLDER... (pair), or --like RUN (train "
            "with that run's settings): exactly one"
        )
    seeds = None
    if args.seeds is not None or args.folders is None:
        try:
            seeds = [int(s) for s in (args.seeds or "0").split(",") if s.strip()]
        except ValueError:
            raise CmlearnError(
                f"--seeds expects comma-separated integers, got {args.seeds!r}"
            ) from None
        if not seeds:
            raise CmlearnError("--seeds is empty")
    if args.folders is not None:
        return _compare_folders(args, seeds)
    cfg = _preset_config(args.preset, args.steps, args.tasks, args.overrides, run=args.like_run)
    out = args.out or Path("runs") / f"compare-{args.preset or args.like_run.name}"
    return _compare_and_report(
        cfg, args.methods.split(","), seeds, out, args.quiet, args.json, _runtime(args), args.dagger
    )


def _compare_folders(args: argparse.Namespace, seeds: list[int] | None) -> int:
    """``compare --from``: the report of runs already trained; ``compare.json`` and the
    plots go to ``--out`` when it is given (never into one of the folders read)."""
    from cmlearn.app.compare import compare_folders, format_table
    from cmlearn.app.runs import read_config

    given = [f for f, v in (("--steps", args.steps), ("--tasks", args.tasks)) if v is not None]
    given += ["--set"] if args.overrides else []
    if given:
        raise CmlearnError(
            f"--from reads the runs' own settings; {', '.join(given)} cannot change them"
        )
    if args.out is not None and any(args.out.resolve() == f.resolve() for f in args.folders):
        raise CmlearnError(
            f"--out {args.out} is one of the --from folders: pick another (its compare.json "
            "would be replaced)"
        )
    runtime = _runtime(args)
    report = compare_folders(args.folders, args.methods.split(","), seeds, runtime, args.dagger)
    if args.out is None:
        print(_json(report) if args.json else format_table(report))
        return 0
    cfg = read_config(Path(next(iter(report["runs"].values()))))
    return _write_report(report, cfg, args.out, args.json, runtime)


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = _preset_config(DEMO_PRESET, args.steps, None, [])
    print(
        f"cmlearn demo: meta-training MAML and CML on {DEMO_PRESET} "
        f"({cfg.train.steps} meta-iterations each), then testing both on the same "
        f"{cfg.eval.tasks} tasks",
        flush=True,
    )
    return _compare_and_report(
        cfg,
        ["maml", "cml"],
        [cfg.train.seed],
        args.out,
        args.quiet,
        runtime=_runtime(args),
        dagger="none",  # the demo is MAML against CML
    )


def _compare_and_report(
    cfg: Config,
    methods: list[str],
    seeds: list[int],
    out: Path,
    quiet: bool,
    as_json: bool = False,
    runtime: Runtime | None = None,
    dagger: str = "code",
) -> int:
    """Train and compare, save ``compare.json``, print the table (or JSON), draw the plots."""
    from cmlearn.app.compare import compare

    report = compare(cfg, methods, seeds, out, not quiet, runtime, dagger)
    return _write_report(report, cfg, out, as_json, runtime)


def _write_report(
    report: dict, cfg: Config, out: Path, as_json: bool, runtime: Runtime | None
) -> int:
    """Save ``compare.json``, print the table (or JSON), draw the plots."""
    from cmlearn.app.build import build_source
    from cmlearn.app.compare import format_table
    from cmlearn.app.evaluate import fixed_tasks
    from cmlearn.app.files import atomic_text
    from cmlearn.app.plots import learning_curves, sinusoid_fits
    from cmlearn.app.runs import load_run

    atomic_text(_json(report, indent=2) + "\n", out / "compare.json")
    print(_json(report) if as_json else format_table(report))
    runs = {k: Path(v) for k, v in report["runs"].items()}
    plots = [learning_curves(runs, out / "learning_curves.png")]
    if cfg.data.name == "sinusoid":  # the paper's Fig. 2 view, first seed of each method
        first: dict[str, Path] = {}
        for key, run in runs.items():
            first.setdefault(key.rsplit("-s", 1)[0], run)
        learners = {name.upper(): load_run(run, runtime=runtime)[1] for name, run in first.items()}
        tasks = fixed_tasks(build_source(cfg, runtime), 3, cfg.eval.seed, "test")[0].get()
        plots.append(sinusoid_fits(learners, tasks, out / "fig2_sinusoid.png", cfg.eval.steps))
    if not as_json:
        print("plots: " + ", ".join(str(p) for p in plots))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from cmlearn.app.analysis.report import DEFAULT_TASKS, analyze

    _positive("--tasks", args.tasks)
    report = analyze(
        args.runs,
        args.out,
        args.tasks or DEFAULT_TASKS,
        _runtime(args),
        logged_only=args.logged_only,
    )
    out = Path(report["out"])
    for run in report["runs"]:
        cka = run["cka"]
        text = (
            f"skipped ({cka['skipped']})"
            if "skipped" in cka
            else ", ".join(f"{k} {v:.3f}" for k, v in cka["mean"].items())
        )
        print(f"{run['label']}: CKA before/after adaptation: {text}")
    for method in report["methods"]:
        if line := _method_line(method):
            print(line)
    names = [out / name for name in report["figures"].values()]
    print("analysis: " + ", ".join(str(p) for p in [out / "analysis.json", *names]))
    for name, why in report["skipped_figures"].items():
        print(f"not drawn: {name} ({why})")
    return 0


def _method_line(method: dict) -> str:
    """One method's co-learner numbers over its seeds (mean ± 95 % t over seeds), or ''."""
    stats = method["over_seeds"]
    shown = {
        "co_loss_last_tenth": "late L^c",
        "share_mean.body": "co share of the body gradient",
        "co_share_where_meta_is_zero": "co share on positions the head never reads",
    }
    parts = []
    for key, name in shown.items():
        if key in stats:
            s = stats[key]
            spread = f" ± {s['ci95']:.3f}" if math.isfinite(s["ci95"]) else ""
            parts.append(f"{name} {s['mean']:.3f}{spread}")
    seeds = ",".join(map(str, method["seeds"]))
    return f"{method['method']} (seeds {seeds}): " + "; ".join(parts) if parts else ""


def cmd_presets(args: argparse.Namespace) -> int:
    from cmlearn.app.presets import describe

    listed = describe(args.table)
    if args.json:
        from cmlearn.app.config import get_preset

        print(_json({name: get_preset(name).to_dict() for name, _ in listed}))
        return 0
    width = max(len(name) for name, _ in listed) + 2
    if args.table is not None:
        print(f"Table {args.table}: the paper's numbers  ·  the preset")
        for name, text in listed:
            print(f"  {name:<{width}}{text}")
        return 0
    from cmlearn.app.presets import grouped

    for i, (header, rows) in enumerate(grouped()):
        print(("\n" if i else "") + header)
        for name, text in rows:
            print(f"  {name:<{width}}{text}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cmlearn.app.bench import suite as bench

    _positive("--repeats", args.repeats)
    try:
        threads = tuple(int(t) for t in args.threads.split(",") if t.strip())
    except ValueError:
        raise CmlearnError(
            f"--threads expects comma-separated integers, got {args.threads!r}"
        ) from None
    if not threads or min(threads) < 1:
        raise CmlearnError("--threads needs at least one positive thread count")
    log = (lambda _: None) if args.json else (lambda s: print(f"... {s}", file=sys.stderr))
    result = bench.run(args.repeats, args.quick, threads, log)
    print(_json(result) if args.json else bench.format_report(result))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from cmlearn.app.data import catalog
    from cmlearn.app.runtime import default_cache, default_data_root

    root = args.data_root.expanduser() if args.data_root else default_data_root()
    if args.data_command == "list":
        rows = catalog.list_datasets(root, default_cache())
        if args.json:
            print(_json(rows))
            return 0
        print(f"data root: {root}")
        width = max(len(row["name"]) for row in rows) + 4
        line = "{:<" + str(width) + "}{:<12}{:<8}{:<11}{}"
        for domain in dict.fromkeys(row["domain"] for row in rows):
            print(f"\n{domain}")
            print(line.format("  dataset", "state", "cache", "download", "folder"))
            for row in (r for r in rows if r["domain"] == domain):
                state = "ok" if row["valid"] else "incomplete" if row["present"] else "absent"
                cached = "cached" if row["cached"] else "-"
                print(line.format(f"  {row['name']}", state, cached, row["download"], row["where"]))
        for row in rows:
            if row["present"] and not row["valid"]:
                print(f"  {row['name']}: {row['problem']}")
        return 0
    if args.data_command == "check":
        report = catalog.check_dataset(
            args.name, root, default_cache(), checksums=not args.no_checksums
        )
        if args.json:
            print(_json(report))
            return 0
        for f in report["files"]:
            verdict = "ok" if f["ok"] else "differs"
            print(f"{f['path']}: md5 {f['md5']} {verdict}, sha256 {f['sha256']}")
        unit = "nodes" if "nodes" in report else "images"
        for split, counts in report["splits"].items():
            print(f"{args.name} {split}: {counts['classes']} classes, {counts[unit]} {unit}")
        for warning in report["warnings"]:
            print(f"cmlearn: warning: {warning}", file=sys.stderr)
        print(f"{args.name}: ok, {report[unit]} {unit} ({report['where']})")
        return 0
    for row in catalog.fetch_dataset(args.name, root, args.url, progress=not args.quiet):
        print(f"{row['file']}: {row['status']} -> {row['path']}")
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "eval": cmd_eval,
    "compare": cmd_compare,
    "analyze": cmd_analyze,
    "presets": cmd_presets,
    "bench": cmd_bench,
    "data": cmd_data,
}


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): rank 0 alone reports."""
    try:
        return int(os.environ.get("RANK", "0")) if _world() > 1 else 0
    except ValueError:
        return 0


def _world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def exit_process(code: int) -> NoReturn:
    """End this process with ``code``. A torchrun rank skips the interpreter's teardown:
    there a thread that gloo left behind can abort the process (SIGABRT, "terminate called
    without an active exception") after the rank's work is saved and its group left, and
    torchrun would then report a finished run as failed. Files are closed by then; only
    the standard streams need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _world() > 1:
        os._exit(code)
    sys.exit(code)


def _import_heavy() -> None:
    """Load torch and the registries with Ctrl-C ending the process at once: a
    KeyboardInterrupt inside a C extension's import leaves it half-loaded, and the next
    import of it fails with a traceback. Nothing has been done yet, so nothing is lost."""

    def abort_now(signum: int, frame: object) -> None:
        print("cmlearn: aborted", file=sys.stderr, flush=True)
        os._exit(130)

    try:
        previous = signal.signal(signal.SIGINT, abort_now)
    except ValueError:  # not the main thread (main() called from a thread): plain import
        previous = None
    try:
        import cmlearn.app.config  # noqa: F401
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    who = f"cmlearn[rank {os.environ.get('RANK', '?')}]" if _world() > 1 else "cmlearn"
    try:
        _import_heavy()
        args = _parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # for --nproc's relaunch
        return COMMANDS[args.command](args)
    except Interrupted as err:  # saved; not an error
        if _rank() == 0:
            print(f"cmlearn: {err}", file=sys.stderr)
        return 130
    except CmlearnError as err:
        print(f"{who}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{who}: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cmlearn presets | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
