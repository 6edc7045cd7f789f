"""The process group of a run: which process this is, on which device, under which strategy.

vlmzoo never starts processes itself: ``torchrun`` starts one process per device and sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_world`
reads them and joins the process group, :func:`teardown` leaves it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

from vlmzoo.errors import ConfigError

Strategy = Literal["single", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("single", "ddp", "fsdp")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
BACKENDS: tuple[str, ...] = ("gloo", "nccl")
TORCHRUN_ENV: tuple[str, ...] = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """Where this process stands: its strategy, rank among ``world_size`` processes, and device.

    ``owns_group`` is True when :func:`init_world` created the process group (so :func:`teardown`
    destroys it); a group the caller created stays theirs.
    """

    strategy: str = "single"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.strategy != "single"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, writes history and single-file outputs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over all ranks (a copy; ``value`` itself on a single process)."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total

    def all_ok(self, ok: bool) -> bool:
        """Collective: True on every rank when ``ok`` holds on every rank. Ranks that must act
        together (a checkpoint's swap) agree through it instead of waiting at a barrier that a
        failed rank never reaches."""
        if not self.distributed:
            return ok
        failures = torch.tensor([0 if ok else 1], device=self.device)
        dist.all_reduce(failures)
        return int(failures.item()) == 0

    def broadcast_text(self, text: str) -> str:
        """Collective: rank 0's ``text`` on every rank (its UTF-8 bytes sent as a tensor, never
        pickled as ``broadcast_object_list`` would)."""
        if not self.distributed:
            return text
        data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=self.device)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        if int(size.item()) == 0:
            return ""
        if not self.is_main:
            data = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        dist.broadcast(data, src=0)
        return bytes(data.cpu().tolist()).decode()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> cuda when a GPU is visible, else cpu; refuses cuda without a GPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} requested but no CUDA GPU is visible (torch.cuda.is_available() is "
            "False); train with --device cpu (the gloo backend)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(device)!r} is not supported for training; use cpu or cuda")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot run: only fp32 and bf16 exist, and bf16 on CUDA needs a
    GPU with bf16 support (Ampere or newer); fp16 would also need a loss scaler, which vlmzoo omits."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"precision 'bf16' requested but {torch.cuda.get_device_name(device)} has no bf16 support; "
            "use --precision fp32"
        )


def init_world(
    strategy: str = "single", device: str | torch.device | None = "cpu", backend: str | None = None
) -> World:
    """Join the process group ``torchrun`` prepared (or stay alone for ``"single"``).

    ``backend`` defaults to nccl on CUDA and gloo on CPU. Each process uses GPU ``LOCAL_RANK``.
    Raises :class:`ConfigError` for an unknown strategy, a distributed strategy without torchrun's
    environment, a single-process strategy under torchrun, or a backend the device cannot use.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    device = resolve_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(
            "backend 'nccl' needs CUDA GPUs but training runs on the CPU; use the gloo backend on CPU"
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "single":
        if world_size > 1:
            raise ConfigError(
                f"launched by torchrun with WORLD_SIZE={world_size} but --strategy single: every process "
                "would train the whole model alone; pass --strategy ddp or --strategy fsdp"
            )
        return World(device=device)
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ConfigError(
            f"--strategy {strategy} needs the process group that torchrun sets up (missing environment: "
            f"{', '.join(missing)}); launch with `torchrun --nproc_per_node N -m vlmzoo train --strategy "
            f"{strategy} ...` — vlmzoo does not start processes itself"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "use --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend)
    elif dist.get_backend() != backend:
        raise ConfigError(f"the process group already uses backend {dist.get_backend()!r}, not {backend!r}")
    return World(strategy, rank, local_rank, world_size, device, owns)


def teardown(world: World) -> None:
    """Destroy the process group if :func:`init_world` created it."""
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()
