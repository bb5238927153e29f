"""Where a run's scalars go besides ``metrics.jsonl`` (which is always written).

``train.log=tensorboard`` (``--log tensorboard``) mirrors every record as TensorBoard scalars
in ``RUN/tensorboard``: losses, validation metric, learned step sizes and, when the gradient
analysis is on, CML's per-layer norms and cosine (``gradients/<layer>/<stat>``).
"""

from __future__ import annotations

import json
from pathlib import Path

from cmlearn.core.errors import CmlearnError

SINKS = ("jsonl", "tensorboard")
METRICS = "metrics.jsonl"  # every run's log, one JSON record per line
TENSORBOARD_DIR = "tensorboard"


class TensorBoardSink:
    """Scalars of each metrics record, at the record's step. On resume, events from the
    checkpoint's step on are purged (TensorBoard's ``purge_step``) and that step's records,
    which ``metrics.jsonl`` kept, are written again: the events then match the log exactly."""

    def __init__(self, run: Path, resume_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CmlearnError(
                "--log tensorboard needs the tensorboard package: "
                "pip install 'cmlearn[tensorboard]' (or pip install tensorboard)"
            ) from None
        self.writer = SummaryWriter(str(Path(run) / TENSORBOARD_DIR), purge_step=resume_step)
        if resume_step is not None:
            for line in (Path(run) / METRICS).read_text().splitlines():
                record = json.loads(line)
                if record["step"] == resume_step:
                    self.write(record)

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for tag, value in _scalars(record):
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _scalars(record: dict, prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves of a (nested) record as ``a/b/c`` tags; ``None`` and ``step`` skipped."""
    out = []
    for key, value in record.items():
        if key == "step" and not prefix:
            continue
        if isinstance(value, dict):
            out += _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append((f"{prefix}{key}", float(value)))
    return out


def open_sink(kind: str, run: Path, resume_step: int | None) -> TensorBoardSink | None:
    """The extra sink for ``train.log`` (None for plain ``jsonl``)."""
    return TensorBoardSink(run, resume_step) if kind == "tensorboard" else None
