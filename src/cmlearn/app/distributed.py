"""Meta-training over several processes with ``torch.distributed`` (launched by torchrun).

Every rank samples the same seeded meta-batch and takes a contiguous share of its tasks; the
share's gradient is weighted by its fraction of the whole batch, so one all-reduce (a sum)
of all gradients gives every rank the gradient of the whole batch's mean loss, whatever the
split (5 tasks over 2 ranks included). ``DistributedDataParallel`` is not used: its hooks
fire through the module's own ``forward``, which ``functional_call`` over parameter dicts
bypasses, so the gradients are reduced explicitly, flattened into one bucket together with
the step's losses and the ranks' stop votes: one collective per step.

Rank 0 alone writes the run folder; the others only compute. With a world size of 1 nothing
here communicates (the single-process path is unchanged).

Environment (set by torchrun): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; ``CMLEARN_DIST_TIMEOUT`` (seconds, default 600) bounds how long a rank waits
for the others (rank 0's validation and checkpoints included) before it gives up.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as tdist
from torch import Tensor

from cmlearn.app.runtime import Runtime
from cmlearn.core.errors import CmlearnError

if TYPE_CHECKING:
    from cmlearn.core.engine import Learner

TIMEOUT_ENV = "CMLEARN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


@dataclass
class Distributed:
    """This process's place among the ranks, and the collectives training needs.

    ``vote`` is asked at every step's all-reduce whether this rank wants to stop (a signal,
    ``should_stop``); ``stopping`` is then true on every rank if any rank voted, so all
    ranks stop after the same step and none waits for a collective that never comes.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    vote: Callable[[], bool] = field(default=lambda: False, repr=False)
    stopping: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The rank that validates, logs and writes the run folder."""
        return self.rank == 0

    def share(self, n_tasks: int) -> tuple[int, int]:
        """This rank's contiguous task range ``[first, end)`` of an ``n_tasks`` meta-batch;
        shares differ by at most one task."""
        if n_tasks < self.world:
            raise CmlearnError(
                f"a meta-batch of {n_tasks} tasks cannot be split over {self.world} ranks; "
                f"use task.meta_batch >= {self.world} or fewer processes"
            )
        return self.rank * n_tasks // self.world, (self.rank + 1) * n_tasks // self.world

    def runtime(self, runtime: Runtime) -> Runtime:
        """On CUDA each rank uses the GPU of its local rank."""
        if self.active and runtime.device.type == "cuda":
            return replace(runtime, device=torch.device("cuda", self.local_rank))
        return runtime

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (e.g. whether the run resumes)."""
        if not self.active:
            return flag
        value = torch.tensor([float(flag)], device=self._device())
        self._collective(tdist.broadcast, value, 0)
        return bool(value.item())

    def check_start(self, learner: Learner, step: int) -> None:
        """Refuse what cannot be split by task, then check that every rank starts from rank
        0's parameters and step: a resumed rank that read another checkpoint (``--out`` not
        on a shared filesystem) would otherwise train a different model silently."""
        if not self.active:
            return
        for name, module in learner.net.named_modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and (
                module.track_running_stats
            ):
                raise CmlearnError(
                    f"{name} tracks running BatchNorm statistics, which depend on the order "
                    "in which one process sees the tasks; distributed training needs "
                    "model.bn=transductive"
                )
        tensors = [*learner.net.parameters(), *learner.step_sizes.values()]
        mine = _flatten([t.detach() for t in tensors], [float(step)])
        ref = mine.clone()
        self._collective(tdist.broadcast, ref, 0)
        differs = torch.tensor([float(not torch.equal(ref, mine))], device=mine.device)
        self._collective(tdist.all_reduce, differs)
        if differs.item():
            raise CmlearnError(
                f"the {self.world} ranks do not start from the same parameters and step; when "
                "resuming on several machines --out must be on a filesystem they all see"
            )

    def reduce(self, tensors: Sequence[Tensor], stats: Sequence[float]) -> list[float]:
        """Sum ``tensors`` (in place) and ``stats`` over the ranks in one all-reduce, with
        this rank's stop vote appended; sets ``stopping``."""
        bucket = _flatten(tensors, [*stats, float(self.vote())])
        self._collective(tdist.all_reduce, bucket)
        offset = 0
        for t in tensors:
            t.copy_(bucket[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        *summed, votes = bucket[offset:].tolist()
        self.stopping = votes > 0
        return summed

    def _device(self) -> torch.device:
        if tdist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _collective(self, op: Callable, *args: object) -> None:
        """Run a collective; a rank that died or hangs becomes a one-line error here (the
        launcher then stops the others) instead of a traceback or a wait forever."""
        try:
            op(*args)
        except RuntimeError as err:
            raise CmlearnError(
                f"rank {self.rank} lost the other ranks ({_reason(err)}): another rank "
                f"failed, was stopped, or did not answer within {self.timeout_s:g} s "
                f"(${TIMEOUT_ENV})"
            ) from None


def _reason(err: BaseException, limit: int = 120) -> str:
    """The first line of a backend error, without gloo's source location."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flatten(tensors: Sequence[Tensor], stats: Sequence[float]) -> Tensor:
    """One contiguous bucket: the tensors (in a dtype that holds them all), then ``stats``."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    device = tensors[0].device if tensors else torch.device("cpu")
    parts = [t.reshape(-1).to(dtype) for t in tensors]
    parts.append(torch.tensor(list(stats), dtype=dtype, device=device))
    return torch.cat(parts)


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise CmlearnError(f"${TIMEOUT_ENV} must be a positive number of seconds (got {raw!r})")
    return value


def from_env() -> Distributed:
    """This process's rank and world size as torchrun sets them (one process without)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise CmlearnError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise CmlearnError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return Distributed(rank, world, local, timeout_s() if world > 1 else DEFAULT_TIMEOUT_S)


@contextmanager
def join(device: torch.device) -> Iterator[Distributed]:
    """This process's ``Distributed``; joins the process group (gloo on CPU, NCCL on CUDA)
    unless the caller already did, and leaves it afterwards if it joined it."""
    if tdist.is_available() and tdist.is_initialized():  # the caller's group
        rank = tdist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        yield Distributed(rank, tdist.get_world_size(), local, timeout_s())
        return
    dist = from_env()
    if not dist.active:
        yield dist
        return
    if not tdist.is_available():
        raise CmlearnError("this PyTorch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        if dist.local_rank >= torch.cuda.device_count():
            raise CmlearnError(
                f"LOCAL_RANK {dist.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU"
            )
        torch.cuda.set_device(dist.local_rank)
    try:
        tdist.init_process_group(
            backend,
            rank=dist.rank,
            world_size=dist.world,
            timeout=timedelta(seconds=dist.timeout_s),
        )
    except (RuntimeError, ValueError) as err:
        raise CmlearnError(
            f"rank {dist.rank} could not join the process group: {_reason(err)}"
        ) from None
    ok = False
    try:
        yield dist
        ok = True
    finally:
        if ok or backend == "gloo":  # NCCL after a failed collective: leave it to the exit
            tdist.destroy_process_group()


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: Sequence[str]) -> int:
    """``cmlearn <argv>`` as ``nproc`` processes on this machine, under torchrun's launcher
    (``torch.distributed.run``, run in this process so its failures become one line).

    The workers run in sessions of their own, so a Ctrl-C reaches the launcher alone, which
    passes it on once: every rank then saves (rank 0) and stops after the same step.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):  # its log lines repeat ours
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = parse_args(
        ["--standalone", f"--nproc_per_node={nproc}", "-m", "cmlearn", *strip_nproc(argv)]
    )
    try:
        run(args)
    except SignalException as err:
        print(f"cmlearn: stopped by {err.sigval.name}", file=sys.stderr)
        return 130
    except ChildFailedError as err:
        codes = {rank: failure.exitcode for rank, failure in err.failures.items()}
        if all(code == 130 for code in codes.values()):
            return 130  # interrupted and saved; rank 0 said so
        first = min(codes, key=lambda r: (codes[r] in (130, -15), r))
        print(
            f"cmlearn: error: rank {first} failed (exit status {codes[first]}; its message "
            "is above); the other ranks were stopped",
            file=sys.stderr,
        )
        return codes[first] if 0 < codes[first] < 128 else 1
    return 0
