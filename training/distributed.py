"""Data-parallel training with torch DDP: `zerodefect train CONFIG --nproc N` under torchrun.

`zerodefect train --nproc N` runs `torchrun` (torch.distributed.run), which starts N copies of
`zerodefect train CONFIG`; each finds its rank in the environment torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK). Gloo on CPU, NCCL on GPUs (one GPU per process).

One process and N give the same run: `train.batch_size` stays the *global* batch, split evenly
across the processes; every process draws the same permutation (DistributedSampler, seeded by
`train.seed` and the epoch), so the N shards of step k are exactly the one-process batch k;
a sample's augmentation is seeded by (seed, epoch, index), not by the order it is drawn in;
DDP averages the gradients, i.e. the gradient of the global batch's mean loss. What differs
is float rounding and batch norm, which normalises over each process's share of the batch
(as in torchvision's reference scripts without --sync-bn); its running statistics are averaged
across processes at each epoch's end, so every process ends with the same weights.

Rank 0 alone validates (and broadcasts the score, so every process stops at the same epoch),
writes the run folder and checkpoints, logs to MLflow, exports, evaluates and registers. The
other processes leave once the weights are trained; they write nothing, so a node without the
run folder can join (resume needs it on shared storage).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from zerodefect.training.config import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    # "gloo" or "nccl"; "" for one process.
    backend: str = ""

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, checkpoints, exports and registers."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    """torchrun (or another launcher speaking its protocol) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def current() -> World:
    """The world of an initialised process group, else one process."""
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return World(dist.get_rank(), dist.get_world_size(), local_rank, str(dist.get_backend()))
    return World()


def start(device_preference: str) -> World:
    """Join the process group when torchrun started this process (NCCL with CUDA, else gloo);
    a plain process is a world of one and initialises nothing."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return World()
    from zerodefect.training.train import select_device

    if dist.is_initialized():
        return current()
    cuda = select_device(device_preference).type == "cuda"
    if cuda:
        # "cuda" then means this process's own GPU everywhere (model, batches, NCCL).
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # The other processes wait while rank 0 alone validates the dataset (every image opened) and
    # the val split: longer than torch's default 10-30 min on a large archive.
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=2))
    return current()


def finish() -> None:
    """Leave the process group once every process is done training."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_config(one_pass: bool, task: str, batch_size: int, processes: int) -> None:
    """Refuse what DDP cannot run as one process would (ConfigError, before anything starts).

    A one-pass task (anomaly: features of the good parts into a memory bank) has no gradients to
    average; N processes would each build the whole bank. It trains in one process."""
    if processes < 2:
        return
    if one_pass:
        raise ConfigError(
            f"task {task!r} is fitted in one pass (a memory bank, no gradient steps), so it does not "
            f"train in parallel: run it without --nproc"
        )
    if batch_size % processes:
        raise ConfigError(
            f"train.batch_size {batch_size} does not split evenly over {processes} processes: "
            f"it is the global batch; set a multiple of {processes}"
        )


def torchrun_args(
    nproc: int,
    child_args: list[str],
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int = 29500,
) -> list[str]:
    """torchrun's arguments to run `zerodefect CHILD_ARGS` in N processes per node.

    One node: `--standalone` (a local rendezvous on a free port). Several: a static rendezvous
    at MASTER_ADDR:MASTER_PORT, the same command on every node with its own --node-rank."""
    args = [f"--nproc-per-node={nproc}"]
    if nnodes == 1:
        args.append("--standalone")
    else:
        if not master_addr:
            raise ConfigError("--nnodes above 1 needs --master-addr (the node of rank 0)")
        args += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            f"--master-addr={master_addr}",
            f"--master-port={master_port}",
        ]
    return [*args, "-m", "zerodefect", *child_args]


def launch(args: list[str]) -> int:
    """Run torchrun with `args` in this process (its agent starts and watches the training
    processes) and return the exit code: 0, rank 0's own code when it failed (2 for a user
    error, 3 for a run that collapsed, as without torchrun), else 1."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(args))
    except ChildFailedError as exc:
        rank0 = exc.failures.get(0)
        return rank0.exitcode if rank0 is not None and rank0.exitcode > 0 else 1
    return 0


def first_on_each_node(world: World, work: Callable[[], T]) -> T:
    """Run `work` on each node's first process, then on the others: e.g. importing a manifest
    that does not exist yet, so that processes never write the same file at once."""
    if not world.distributed:
        return work()
    if world.local_rank == 0:
        result = work()
        dist.barrier()
        return result
    dist.barrier()
    return work()


def broadcast(world: World, value: T) -> T:
    """Rank 0's `value` (any picklable object) on every process."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across(world: World, value: torch.Tensor) -> torch.Tensor:
    """A detached scalar averaged over the processes: the global batch's mean loss, the same on
    every rank (so a NaN stops them all at the same step)."""
    value = value.detach().reshape(1).float()
    if world.distributed:
        dist.all_reduce(value)
        value /= world.size
    return value[0]


def average_buffers(world: World, module: nn.Module) -> None:
    """Average float buffers (batch-norm running statistics) over the processes; DDP keeps the
    parameters equal, this makes the whole state equal."""
    if not world.distributed:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world.size
        else:
            dist.broadcast(buffer, src=0)


def buffers_from_rank0(world: World, module: nn.Module) -> None:
    """Rank 0's buffers on every process: for a run stopped mid-epoch (a NaN loss), whose
    processes each updated their own running statistics since the last average."""
    if world.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors (names, shapes and bytes): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def gather_digests(world: World, model: nn.Module) -> list[str]:
    """Every process's weights digest, in rank order (on every rank); a ValueError when they
    differ, since then the processes did not train one model."""
    mine = weights_digest(model.state_dict())
    if not world.distributed:
        return [mine]
    digests: list[Any] = [None] * world.size
    dist.all_gather_object(digests, mine)
    if len(set(digests)) > 1:
        raise ValueError(f"the processes ended with different weights: {digests}")
    return digests


def wrap_for_training(
    world: World, model: nn.Module, batch_loss: Callable[[nn.Module, Any, torch.device], torch.Tensor]
) -> Callable[[nn.Module, Any, torch.device], torch.Tensor]:
    """The batch loss to train with: the task's own in one process; under DDP, the same loss
    computed through a DistributedDataParallel module, so gradients are averaged across ranks
    even for a task whose loss calls a method other than `forward` (a detector's `loss`)."""
    if not world.distributed:
        return batch_loss
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    # Buffers are averaged at the epoch's end (average_buffers), not broadcast at every step.
    ddp = DistributedDataParallel(
        _LossModule(model, batch_loss),
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
    )
    return lambda _model, batch, dev: ddp(batch, dev)


class _LossModule(nn.Module):
    """The task's batch loss as a module's forward, for DDP to wrap."""

    def __init__(self, model: nn.Module, batch_loss: Callable[[nn.Module, Any, torch.device], torch.Tensor]):
        super().__init__()
        self.model = model
        self.batch_loss = batch_loss

    def forward(self, batch: Any, device: torch.device) -> torch.Tensor:
        return self.batch_loss(self.model, batch, device)


class SeededAugment(Dataset):
    """A dataset whose augmentation for sample i in epoch e is seeded by (seed, e, i): the same
    whichever process draws it and in whatever order, so one process and N augment alike (and
    a resumed run like an uninterrupted one)."""

    def __init__(self, dataset: Dataset, augment: Any, seed: int):
        self.dataset = dataset
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        if self.augment is not None:
            self.augment.set_random_seed((self.seed * 1000 + self.epoch) * 1_000_003 + i)
        return self.dataset[i]
