"""Building modules without a second copy of their weights: parameters placed as they are made,
tensors adopted instead of copied, and the memory a model needs checked before it is allocated.

The usual ``model = cls(config); model.load_state_dict(tensors)`` holds the random
initialisation and the loaded tensors at once, in float32: a 7B model in bf16 (14 GB on disk)
peaks near 42 GB. Here instead:

- :func:`parameters_placed` makes every parameter registered on the calling thread land on a
  chosen device and dtype the moment it is registered (on ``"meta"``: no memory at all), while
  buffers stay real — non-persistent buffers (rotary frequencies, position ids) are not in a
  checkpoint and keep the values the module computed. transformers and accelerate build empty
  models the same way (``init_empty_weights(include_buffers=False)``).
- :func:`adopt` puts a loaded tensor into the module *as* its parameter (``assign`` semantics):
  a tensor read from a memory-mapped safetensors file in the right dtype and device is used
  without a copy; otherwise one tensor at a time is cast or moved.
- :func:`retie` restores the ties (an LM head sharing the embedding matrix) that adoption breaks,
  since it replaces the parameter objects the ties shared.
- :func:`check_memory` compares what a model will take with what the device has free, so a
  request that cannot fit is refused before anything is allocated.

A registration hook (not a patched ``nn.Module``) is used so that other threads building modules
at the same time are unaffected.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn as nn

from vlmzoo.errors import ConfigError, InsufficientMemoryError

M = TypeVar("M", bound=nn.Module)

# Memory that a process needs beyond its tensors (allocator slack, the Python heap, kernels'
# workspaces) and that the check leaves free: 2% of the device, at least 256 MiB.
_HEADROOM_FRACTION = 0.02
_HEADROOM_MIN = 256 * 2**20
_ALIGNMENT = 64  # bytes: what torch's CPU allocator gives every tensor
SKIP_MEMORY_CHECK_ENV = "VLMZOO_SKIP_MEMORY_CHECK"  # "1": do not refuse a model bigger than free memory


@contextmanager
def parameters_placed(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> Iterator[None]:
    """Every parameter registered on this thread inside the block is moved to ``device`` and its
    floats cast to ``dtype`` as it is registered (``None``: left as made).

    ``device="meta"`` builds a module that holds no parameter memory; with ``dtype`` a module is
    built directly in bf16 (its initialisers then run in bf16), never holding a float32 copy.
    Modules usually allocate a parameter with ``torch.empty`` and initialise it after registering
    it, so the initialisation runs on the placed tensor.
    """
    if device is None and dtype is None:
        yield
        return
    thread = threading.get_ident()
    target = None if device is None else torch.device(device)

    def place(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
        if param is None or threading.get_ident() != thread:
            return None
        cast = dtype if dtype is not None and param.is_floating_point() else None
        if (target is None or param.device == target) and (cast is None or param.dtype == cast):
            return None
        with torch.no_grad():
            moved = param.to(device=target, dtype=cast)
        return nn.Parameter(moved, requires_grad=param.requires_grad)

    hook = torch.nn.modules.module.register_module_parameter_registration_hook(place)
    try:
        yield
    finally:
        hook.remove()


# Factory functions whose first arguments are a size (``torch.zeros(2, 3)`` or ``torch.zeros((2, 3))``).
_SIZED = {
    torch.empty,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.empty_strided,
}


@contextmanager
def allocations_below(limit: int, error: Callable[[int], Exception]) -> Iterator[None]:
    """Inside the block, a factory call on this thread (``torch.zeros``, ``randn``, ``arange``,
    ``eye``, ...) asking for more than ``limit`` elements raises ``error(numel)`` *before*
    allocating: a config asking for a position table of 10^12 entries is refused instead of
    taking the machine's memory."""
    from torch.overrides import TorchFunctionMode

    thread = threading.get_ident()

    class Guard(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            if threading.get_ident() == thread:
                numel = _requested_numel(func, args, kwargs)
                if numel is not None and numel > limit:
                    raise error(numel)
            return func(*args, **kwargs)

    with Guard():
        yield


def _requested_numel(func: Callable, args: tuple, kwargs: dict) -> int | None:
    try:
        if func in _SIZED:
            sizes = args[1:] if func is torch.randint else args
            if func is torch.randint:  # randint(high, size) or randint(low, high, size)
                sizes = next((a for a in args if isinstance(a, tuple | list | torch.Size)), ())
            elif func is torch.full:
                sizes = args[0] if args else kwargs.get("size", ())
            elif sizes and isinstance(sizes[0], tuple | list | torch.Size):
                sizes = sizes[0]
            elif not sizes:
                sizes = kwargs.get("size", ())
            n = 1
            for s in sizes:
                n *= int(s)
            return n
        if func is torch.arange:
            numbers = [float(a) for a in args[:3]]
            start, end, step = (0.0, numbers[0], 1.0) if len(numbers) == 1 else (*numbers[:2], 1.0)
            if len(numbers) == 3:
                step = numbers[2]
            return max(0, int((end - start) / step)) if step else None
        if func is torch.eye:
            return int(args[0]) * int(args[1] if len(args) > 1 and isinstance(args[1], int) else args[0])
    except (TypeError, ValueError, OverflowError):
        return None  # let torch word the error
    return None


def build_placed(
    factory: Callable[[], M],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    what: str = "the model",
) -> M:
    """``factory()`` built directly in ``dtype`` on ``device`` (random initialisation), after a
    check on the meta device that it fits in the device's free memory.

    Parameters are cast as they are registered (:func:`parameters_placed`) and allocated on
    ``device`` (``torch.device`` as a context), so a bf16 model never exists in float32 first;
    floating buffers are cast at the end, as ``model.to(dtype)`` would. Without ``dtype`` and
    ``device`` it is ``factory()`` on the CPU, after the same memory check.
    """
    check_dtype(dtype)
    target = torch.device("cpu" if device is None else device)
    with parameters_placed("meta", dtype):  # (not torch.device("meta"): see format._build_checked)
        skeleton = factory()
    check_memory(parameter_bytes(skeleton, dtype), target, what, dtype)
    del skeleton
    if dtype is None and device is None:
        return factory()
    with torch.device(target), parameters_placed(dtype=dtype):
        model = factory()
    return model.to(device=target, dtype=dtype)


def check_dtype(dtype: torch.dtype | None) -> None:
    """Refuse (:class:`ConfigError`) a ``dtype`` that is not a floating torch dtype or ``None``."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ConfigError(
            f"dtype must be a floating torch.dtype (torch.float32, torch.bfloat16, torch.float16) or None "
            f"(as stored / as built), got {dtype!r}"
        )


def adopt(
    model: nn.Module,
    name: str,
    tensor: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> None:
    """Make ``tensor`` the parameter or buffer ``name`` of ``model`` (no copy when it is already
    in ``dtype`` on ``device``; floats are cast to ``dtype``, others kept).

    The parameter keeps its ``requires_grad``; its shape must already have been checked.
    """
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    cast = dtype if dtype is not None and tensor.is_floating_point() else None
    if cast is not None or device is not None:
        tensor = tensor.to(device=device, dtype=cast)
    tensor = tensor.detach().contiguous()  # (a no-op for a file's tensors; converters make views)
    if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % _ALIGNMENT:
        # safetensors packs tensors back to back, so a mapped tensor may start at any multiple of its
        # element size; CPU kernels pick their vector paths by alignment, and an unaligned weight
        # can round differently from the saved model's. One aligned copy, a tensor at a time.
        tensor = tensor.clone()
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=old is None or old.requires_grad)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = tensor
    else:
        raise KeyError(name)


def tied_names(model: nn.Module) -> list[list[str]]:
    """Groups of state-dict names that are one parameter object (tied weights), before adoption."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def retie(model: nn.Module, groups: list[list[str]]) -> None:
    """Point every name of each tied group at the first one that was adopted (not left on meta)."""
    tensors = model.state_dict(keep_vars=True)
    for names in groups:
        source = next((tensors[n] for n in names if tensors[n].device.type != "meta"), None)
        if source is None:
            continue
        for name in names:
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            table = owner._parameters if leaf in owner._parameters else owner._buffers
            table[leaf] = source


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` still on the meta device."""
    return [
        name
        for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]
        if tensor.device.type == "meta"
    ]


def parameter_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of ``model``'s parameters and buffers (each tied tensor once), with floats counted in
    ``dtype`` when given. Works on a meta model."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        size = (
            torch.empty((), dtype=dtype).element_size()
            if dtype is not None and tensor.is_floating_point()
            else tensor.element_size()
        )
        total += tensor.numel() * size
    return total


def free_memory(device: str | torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (``None`` when unknown: meta, or no way to ask)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _available_ram()
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def _available_ram() -> int | None:
    # MemAvailable: what the kernel can hand out without swapping (free + reclaimable cache).
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        import psutil  # optional: other systems
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_memory(needed: int, device: str | torch.device, what: str, dtype: torch.dtype | None) -> None:
    """Refuse (:class:`InsufficientMemoryError`) before allocating when ``needed`` bytes do not fit
    in what ``device`` has free, less a headroom. ``what`` names the model in the message.

    The environment variable ``VLMZOO_SKIP_MEMORY_CHECK=1`` turns the check off (a machine whose
    free memory the check misjudges, or a swap file meant to be used).
    """
    if os.environ.get(SKIP_MEMORY_CHECK_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return
    free = free_memory(device)
    if free is None:
        return
    headroom = max(_HEADROOM_MIN, int(_HEADROOM_FRACTION * free))
    if needed + headroom <= free:
        return
    held = "its own dtypes" if dtype is None else str(dtype).removeprefix("torch.")
    smaller = (
        " a smaller dtype (dtype=torch.bfloat16 halves float32),"
        if dtype in (None, torch.float32, torch.float64)
        else ""
    )
    raise InsufficientMemoryError(
        f"{what} in {held} needs {_gib(needed)} on {torch.device(device)}, but only {_gib(free)} is free "
        f"(less {_gib(headroom)} kept for the run itself); refused before allocating. Use{smaller} another "
        f"device, or free memory (set {SKIP_MEMORY_CHECK_ENV}=1 to try anyway)"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
