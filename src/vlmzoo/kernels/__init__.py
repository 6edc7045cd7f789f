"""Focused linear attention kernels (the core of FLatten's ``FocusedLinearAttention.forward``, from
the ReLU kernel to ``q @ kv * z``) and the function that picks one.

    focused_linear_attention(q, k, v, num_heads, *, scale=None, focusing_factor=3.0, eps=1e-6,
                             backend="auto") -> Tensor

Backends, all computing the same function:

- ``"reference"`` (:mod:`.reference`): plain PyTorch that reads like the paper; the test oracle.
- ``"torch"`` (:mod:`.torch_backend`): a memory-lean autograd Function — saves only its inputs,
  recomputes the feature maps in backward, works in token chunks; float32 accumulation for
  float16/bfloat16. Runs on any device; the default where Triton cannot run.
- ``"triton"`` (:mod:`.triton_backend`): fused Triton forward and backward kernels; the default
  for CUDA tensors when Triton is installed. CPU tensors run it only under the Triton
  interpreter (``TRITON_INTERPRET=1`` set before Triton is imported), which is for tests.
- ``"cpp"`` (:mod:`.cpp_backend`): the torch backend's math as a C++ extension for CPU tensors
  (one task per thread, fused row passes, BLAS per head), compiled on first use (a C++ compiler
  and ninja; ~30 s, then cached). Opt-in: ``"auto"`` does not pick it.

``backend="auto"`` never fails for want of Triton or a GPU: it falls back to ``"torch"``.
While ``torch.compile`` traces, that fallback is ``"reference"``, which
Dynamo captures in one graph. All input validation happens here, once, before any backend runs.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import warnings
from numbers import Real

import torch

from vlmzoo.errors import InputError, VlmzooError

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "default_backend",
    "focused_linear_attention",
    "triton_available",
]

BACKENDS = ("reference", "torch", "triton", "cpp")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class BackendUnavailableError(VlmzooError, RuntimeError):
    """An explicitly requested backend cannot run here (Triton missing, or no GPU for it)."""


_TRITON_BROKEN: list[str] = []  # set when the kernels failed under backend="auto"


@functools.cache
def triton_available() -> bool:
    """True when Triton imports (checked once; importing it is slow, so only on first use)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install (e.g. no compiler driver) must not break the fallback
        return False
    return True


def _triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_runs_on(device: torch.device) -> bool:
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and _triton_interpreter())


def available_backends(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The backends that can run on tensors of ``device``."""
    device = torch.device(device)
    return tuple(
        b
        for b in BACKENDS
        if (b != "triton" or _triton_runs_on(device)) and (b != "cpp" or _cpp_runs_on(device))
    )


def _cpp_runs_on(device: torch.device) -> bool:
    """CPU tensors, a toolchain on PATH, and no failed build in this process (nothing is built)."""
    from vlmzoo.kernels import cpp_backend

    return device.type == "cpu" and cpp_backend.build_error() is None and cpp_backend.toolchain_available()


def default_backend(device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """What ``backend="auto"`` picks: Triton for CUDA tensors of float16/bfloat16/float32 when
    Triton is installed, else ``"torch"`` (float64 included: the kernels compute in float32).

    The Triton interpreter is never picked automatically: it is ~600x slower than PyTorch.
    """
    device = torch.device(device)
    if device.type == "cuda" and dtype in _TRITON_DTYPES and not _TRITON_BROKEN and triton_available():
        return "triton"
    return "torch"


def focused_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    *,
    scale: torch.Tensor | None = None,
    focusing_factor: float = 3.0,
    eps: float = 1e-6,
    backend: str = "auto",
) -> torch.Tensor:
    """Non-causal focused linear attention (FLatten's core, module docstring): q, k, v [B, N, C] -> [B, N, C].

    Args:
        q, k, v: [B, N, C], same dtype (float16/bfloat16/float32/float64) and device. ``k``
            already carries the positional encoding (step 2).
        num_heads: h; C must be divisible by it. The focusing norms still run over all C.
        scale: the per-channel temperature *after* softplus, [C], all > 0; None: no scaling.
        focusing_factor: p of step 5 (3 in FLatten).
        eps: the constant of the kernel ReLU(x) + eps (step 3) and of the normaliser (step 7).
        backend: "auto", "reference", "torch", "triton" or "cpp" (see the module docstring).

    Returns:
        [B, N, C] in the dtype of q, heads concatenated head-major (step 9).

    Raises:
        InputError: on mismatched shapes/dtypes/devices, C not divisible by num_heads, a
            non-positive temperature, or a bad hyperparameter or backend name.
        BackendUnavailableError: ``backend="triton"`` where Triton cannot run, ``backend="cpp"``
            on a non-CPU tensor or where its extension cannot be built.
    """
    _validate(q, k, v, num_heads, scale, focusing_factor, eps)
    if scale is not None:
        scale = scale.reshape(-1)
    name = _resolve(backend, q.device, q.dtype)
    if q.numel() == 0:  # nothing to launch kernels on
        name = "torch"
    if q.device.type == "meta":  # shape propagation (parameter/FLOP counting): the plain formula
        name = "reference"
    if name == "torch" and backend == "auto" and torch.compiler.is_compiling():
        # The torch backend's `out=` writes into strided views break Dynamo's graph (one break per
        # call); the plain formula traces whole and Inductor fuses and plans its memory itself.
        name = "reference"
    args = (q, k, v, num_heads, scale, float(focusing_factor), float(eps))
    if name == "triton" and backend == "auto":
        try:
            return _backend_fn("triton")(*args)
        except Exception as error:  # an install that imports but cannot compile or launch
            _triton_failed(error)
            name = "torch"
    return _backend_fn(name)(*args)


def _backend_fn(name: str):
    if name == "reference":
        from vlmzoo.kernels.reference import focused_linear_attention_reference as fn
    elif name == "torch":
        from vlmzoo.kernels.torch_backend import focused_linear_attention_torch as fn
    elif name == "cpp":
        from vlmzoo.kernels.cpp_backend import focused_linear_attention_cpp as fn
    else:
        from vlmzoo.kernels.triton_backend import focused_linear_attention_triton as fn
    return fn


def _triton_failed(error: Exception) -> None:
    """ "auto" must not fail for Triton's sake: warn once, and stop picking it in this process."""
    _TRITON_BROKEN.append(repr(error))
    warnings.warn(
        f"the Triton focused-linear-attention kernels failed ({error!r}); backend='auto' uses the "
        "PyTorch backend from now on. Pass backend='triton' to see the error.",
        RuntimeWarning,
        stacklevel=3,
    )


def _resolve(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    if backend == "auto":
        return default_backend(device, dtype)
    if backend not in BACKENDS:
        raise InputError(f"backend={backend!r}: expected 'auto' or one of {BACKENDS}")
    if backend == "triton" and dtype not in _TRITON_DTYPES:
        raise InputError(
            f"backend='triton' computes in float32 and takes float16/bfloat16/float32, got {dtype}"
        )
    if backend == "cpp":
        if device.type not in ("cpu", "meta"):
            raise BackendUnavailableError(
                f"backend='cpp' runs on CPU tensors (got {device.type}); use backend='auto' or 'torch'"
            )
        if device.type == "cpu":
            from vlmzoo.kernels.cpp_backend import load_extension

            load_extension()  # builds on first use; raises BackendUnavailableError if it cannot
    if backend == "triton" and not _triton_runs_on(device):
        if not triton_available():
            raise BackendUnavailableError("backend='triton' needs the triton package; use backend='auto'")
        raise BackendUnavailableError(
            f"backend='triton' runs on CUDA tensors (got {device.type}); on CPU only under the Triton "
            "interpreter (TRITON_INTERPRET=1 before triton is imported). Use backend='auto'."
        )
    return backend


def _validate(
    q: object,
    k: object,
    v: object,
    num_heads: object,
    scale: object,
    focusing_factor: object,
    eps: object,
) -> None:
    """Every check of the kernel API, in one place, with messages that name the culprit."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 3:
            raise InputError(f"{name} must be [B, N, C], got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise InputError(
                f"{name} has dtype {t.dtype}; expected one of float16, bfloat16, float32, float64"
            )
    assert isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
    if not q.shape == k.shape == v.shape:
        raise InputError(
            f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not q.dtype == k.dtype == v.dtype:
        raise InputError(f"q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.device == k.device == v.device:
        raise InputError(f"q, k, v must be on the same device, got {q.device}, {k.device}, {v.device}")
    _, tokens, channels = q.shape
    if tokens == 0:
        raise InputError("q, k, v have no tokens (N = 0): the normaliser averages over tokens")
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise InputError(f"num_heads={num_heads!r} must be a positive int")
    if channels % num_heads != 0:
        raise InputError(f"C={channels} is not divisible by num_heads={num_heads}")
    if scale is not None:
        if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
            raise InputError("scale must be a floating-point tensor of C temperatures (after softplus)")
        if scale.numel() != channels or scale.shape[-1:] != (channels,):
            raise InputError(
                f"scale must hold C={channels} temperatures, [C], got shape {tuple(scale.shape)}"
            )
        if scale.device != q.device:
            raise InputError(f"scale is on {scale.device}, q on {q.device}")
        # A host sync on CUDA, but [C] is tiny, and a zero/negative/NaN temperature silently turns
        # every output into inf/NaN. Skipped while torch.compile traces and on the meta device.
        values_known = scale.device.type != "meta" and not torch.compiler.is_compiling()
        if values_known and not bool((scale.detach() > 0).all()):
            raise InputError("scale (the temperature after softplus) must be > 0 in every channel")
    for name, value in (("focusing_factor", focusing_factor), ("eps", eps)):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
            raise InputError(f"{name}={value!r} must be a finite number > 0")
