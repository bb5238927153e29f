"""Run the benchmarks from a checkout: ``python benchmarks/run.py [--json] [--quick]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from cmlearn.app.bench.suite import main  # noqa: E402

raise SystemExit(main())
