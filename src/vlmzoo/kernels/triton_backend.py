"""Focused linear attention as fused Triton kernels: FLatten's attention core, forward and backward.

The math is that of :mod:`vlmzoo.kernels.torch_backend` (see its docstring for the gradient
formulas); here each step is a kernel that reads its inputs once and keeps the rest on chip.

Per token, with x' = (ReLU(a) + eps) / s (steps 3–4), m = maxₖ x'ₖ, u = x' / m ∈ (0, 1],
y = uᵖ (never overflows: u <= 1), f = m ‖u‖ / ‖y‖, the focused feature is φ = f · y (step 5;
φ(x) is homogeneous, so this *is* xᵖ ‖x‖ / ‖xᵖ‖). Norms run over all C channels (across heads).

Forward
  1. ``_stats_kernel``   per token of q and of k: m, ‖u‖, ‖y‖ ([B, N, 3] float32; kept for backward).
  2. ``_kv_kernel``      per (batch, head, token range): φ(k) recomputed from k and its stats, then
                         kᵀv and Σk accumulated in registers (steps 7–8); partial sums over token
                         ranges are added up and divided by N (the N^-½ · N^-½ of step 8) on the host.
  3. ``_out_kernel``     per (batch, head, token tile): y(q), then out = y kᵀv / (y·Σk + eps/f),
                         written head-major into [B, N, C] (step 9). f cancels except in the eps term.
Backward (G = ∂L/∂out; the per-token formulas are in torch_backend)
  4. ``_bwd_q_kernel``   per (batch, head, token range): recompute y(q), R = [G/D, −(G·ñ)/D²],
                         accumulate ∂L/∂[kᵀv | Σk] = yᵀR, write ∂L/∂y = R [kᵀv | Σk]ᵀ.
  5. ``_focus_bwd_kernel`` per token tile, all C: back through the focusing, the temperature and
                         the ReLU into ∂L/∂q, plus per-tile partial sums of ∂L/∂s.
  6. ``_bwd_kv_kernel``  per (batch, head, token tile): ∂L/∂v = φ(k) ∂L/∂kv and
                         ∂L/∂φ(k) = v ∂L/∂kvᵀ + ∂L/∂Σk; then step 5 again for ∂L/∂k.

All arithmetic is float32 (inputs may be float16/bfloat16/float32); matmuls use IEEE float32
for float32 inputs and TF32 for half-precision ones. Head dims that are not powers of two (24,
48, ...) are padded to the next one with masks; N needs no relation to the block sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# --- device helpers ---------------------------------------------------------------------------


@triton.jit
def _pow(u, p, P_IS_3: tl.constexpr):
    """uᵖ for u > 0 (or 0 where masked)."""
    out = u * u * u if P_IS_3 else tl.exp2(p * tl.log2(u))
    return out


@triton.jit
def _pow_minus_one(u, p, P_IS_3: tl.constexpr):
    """uᵖ⁻¹, the derivative's power."""
    out = u * u if P_IS_3 else tl.exp2((p - 1.0) * tl.log2(u))
    return out


@triton.jit
def _kernel_feature(a, inv_s, mask, eps):
    """Steps 3–4: x' = (ReLU(a) + eps) / s, zero where masked (so maxima and sums ignore it)."""
    return tl.where(mask, (tl.maximum(a, 0.0) + eps) * inv_s, 0.0)


@triton.jit
def _load_inv_scale(INV_S, offs_c, mask_c, HAS_SCALE: tl.constexpr):
    if HAS_SCALE:
        inv_s = tl.load(INV_S + offs_c, mask=mask_c, other=1.0)
    else:
        inv_s = tl.full(offs_c.shape, 1.0, tl.float32)
    return inv_s


@triton.jit
def _load_stats(STATS, row, offs_n, mask_n):
    """m, ‖u‖, ‖y‖ of tokens offs_n (1 where masked: no 0/0 on padding rows)."""
    ptr = STATS + (row + offs_n.to(tl.int64)) * 3
    m = tl.load(ptr, mask=mask_n, other=1.0)
    norm_u = tl.load(ptr + 1, mask=mask_n, other=1.0)
    norm_y = tl.load(ptr + 2, mask=mask_n, other=1.0)
    return m, norm_u, norm_y


# --- forward ----------------------------------------------------------------------------------


@triton.jit
def _stats_kernel(
    X,
    stride_xb,
    stride_xn,
    stride_xc,
    INV_S,
    STATS,
    N,
    C,
    p,
    eps,
    HAS_SCALE: tl.constexpr,
    P_IS_3: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Per token: m = max x', ‖u‖ and ‖uᵖ‖ with u = x'/m, over all C channels (step 5's norms)."""
    pid_b = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    x_base = X + pid_b.to(tl.int64) * stride_xb + offs_n[:, None].to(tl.int64) * stride_xn

    m = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_n[:, None] & mask_c[None, :]
        a = tl.load(x_base + offs_c[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
        xp = _kernel_feature(a, _load_inv_scale(INV_S, offs_c, mask_c, HAS_SCALE)[None, :], mask, eps)
        m = tl.maximum(m, tl.max(xp, axis=1))
    m = tl.where(mask_n, m, 1.0)

    sum_u = tl.zeros([BLOCK_N], dtype=tl.float32)
    sum_y = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_n[:, None] & mask_c[None, :]
        a = tl.load(x_base + offs_c[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
        xp = _kernel_feature(a, _load_inv_scale(INV_S, offs_c, mask_c, HAS_SCALE)[None, :], mask, eps)
        u = xp / m[:, None]
        y = tl.where(mask, _pow(tl.where(mask, u, 1.0), p, P_IS_3), 0.0)  # 1 on padding: no log2(0)
        sum_u += tl.sum(u * u, axis=1)
        sum_y += tl.sum(y * y, axis=1)

    out = STATS + (pid_b.to(tl.int64) * N + offs_n) * 3
    tl.store(out, m, mask=mask_n)
    tl.store(out + 1, tl.sqrt(sum_u), mask=mask_n)
    tl.store(out + 2, tl.sqrt(sum_y), mask=mask_n)


@triton.jit
def _head_features(
    X,
    stride_xb,
    stride_xn,
    stride_xc,
    STATS,
    INV_S,
    b,
    h,
    offs_n,
    mask_n,
    offs_d,
    mask_d,
    N,
    D,
    p,
    eps,
    HAS_SCALE: tl.constexpr,
    P_IS_3: tl.constexpr,
):
    """One head's slice of a token tile: (a, y = uᵖ, m, ‖u‖, ‖y‖), y zero where masked."""
    ch = h * D + offs_d
    mask = mask_n[:, None] & mask_d[None, :]
    ptrs = X + b.to(tl.int64) * stride_xb + offs_n[:, None].to(tl.int64) * stride_xn + ch[None, :] * stride_xc
    a = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    inv_s = _load_inv_scale(INV_S, ch, mask_d, HAS_SCALE)
    m, norm_u, norm_y = _load_stats(STATS, b.to(tl.int64) * N, offs_n, mask_n)
    u = tl.where(mask, _kernel_feature(a, inv_s[None, :], mask, eps) / m[:, None], 1.0)
    y = tl.where(mask, _pow(u, p, P_IS_3), 0.0)
    return a, y, m, norm_u, norm_y


@triton.jit
def _kv_kernel(
    K,
    stride_kb,
    stride_kn,
    stride_kc,
    V,
    stride_vb,
    stride_vn,
    stride_vc,
    INV_S,
    K_STATS,
    KV_PART,
    KS_PART,
    N,
    H,
    D,
    p,
    eps,
    TILES_PER_PROGRAM,
    HAS_SCALE: tl.constexpr,
    P_IS_3: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Partial φ(k)ᵀ v and Σ φ(k) of one (batch, head) over a range of token tiles (steps 7–8)."""
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    kv = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    ksum = tl.zeros([BLOCK_D], dtype=tl.float32)
    for t in range(0, TILES_PER_PROGRAM):
        offs_n = (pid_s * TILES_PER_PROGRAM + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        _, y, m, norm_u, norm_y = _head_features(
            K,
            stride_kb,
            stride_kn,
            stride_kc,
            K_STATS,
            INV_S,
            b,
            h,
            offs_n,
            mask_n,
            offs_d,
            mask_d,
            N,
            D,
            p,
            eps,
            HAS_SCALE,
            P_IS_3,
        )
        phi = y * (m * norm_u / norm_y)[:, None]
        v_ptrs = (
            V
            + b.to(tl.int64) * stride_vb
            + offs_n[:, None].to(tl.int64) * stride_vn
            + (h * D + offs_d)[None, :] * stride_vc
        )
        v = tl.load(v_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        kv = tl.dot(tl.trans(phi), v, kv, input_precision=DOT_PRECISION)
        ksum += tl.sum(phi, axis=0)
    part = pid_bh * tl.num_programs(1) + pid_s
    dd = offs_d[:, None] * BLOCK_D + offs_d[None, :]
    tl.store(KV_PART + part.to(tl.int64) * BLOCK_D * BLOCK_D + dd, kv)
    tl.store(KS_PART + part.to(tl.int64) * BLOCK_D + offs_d, ksum)


@triton.jit
def _out_kernel(
    Q,
    stride_qb,
    stride_qn,
    stride_qc,
    INV_S,
    Q_STATS,
    KV,
    KS,
    OUT,
    stride_ob,
    stride_on,
    stride_oc,
    N,
    H,
    D,
    p,
    eps,
    HAS_SCALE: tl.constexpr,
    P_IS_3: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out = y kᵀv / (y · Σk + eps / f) for one (batch, head, token tile) (steps 7–9)."""
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    _, y, m, norm_u, norm_y = _head_features(
        Q,
        stride_qb,
        stride_qn,
        stride_qc,
        Q_STATS,
        INV_S,
        b,
        h,
        offs_n,
        mask_n,
        offs_d,
        mask_d,
        N,
        D,
        p,
        eps,
        HAS_SCALE,
        P_IS_3,
    )
    kv = tl.load(KV + pid_bh.to(tl.int64) * BLOCK_D * BLOCK_D + offs_d[:, None] * BLOCK_D + offs_d[None, :])
    ksum = tl.load(KS + pid_bh.to(tl.int64) * BLOCK_D + offs_d)
    num = tl.dot(y, kv, input_precision=DOT_PRECISION)
    den = tl.sum(y * ksum[None, :], axis=1) + eps * norm_y / (m * norm_u)  # + eps / f
    out = num / den[:, None]
    o_ptrs = (
        OUT
        + b.to(tl.int64) * stride_ob
        + offs_n[:, None].to(tl.int64) * stride_on
        + (h * D + offs_d)[None, :] * stride_oc
    )
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


# --- backward ---------------------------------------------------------------------------------


@triton.jit
def _bwd_q_kernel(
    Q,
    stride_qb,
    stride_qn,
    stride_qc,
    G,
    stride_gb,
    stride_gn,
    stride_gc,
    INV_S,
    Q_STATS,
    KV,
    KS,
    GRAD_Y,
    DKV_PART,
    DKS_PART,
    N,
    C,
    H,
    D,
    p,
    eps,
    TILES_PER_PROGRAM,
    HAS_SCALE: tl.constexpr,
    P_IS_3: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """For a range of query tiles of one (batch, head): ∂L/∂y(q) and partial ∂L/∂[kᵀv | Σk]."""
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    kv = tl.load(KV + pid_bh.to(tl.int64) * BLOCK_D * BLOCK_D + offs_d[:, None] * BLOCK_D + offs_d[None, :])
    ksum = tl.load(KS + pid_bh.to(tl.int64) * BLOCK_D + offs_d)
    dkv = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    dksum = tl.zeros([BLOCK_D], dtype=tl.float32)
    for t in range(0, TILES_PER_PROGRAM):
        offs_n = (pid_s * TILES_PER_PROGRAM + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask = mask_n[:, None] & mask_d[None, :]
        _, y, m, norm_u, norm_y = _head_features(
            Q,
            stride_qb,
            stride_qn,
            stride_qc,
            Q_STATS,
            INV_S,
            b,
            h,
            offs_n,
            mask_n,
            offs_d,
            mask_d,
            N,
            D,
            p,
            eps,
            HAS_SCALE,
            P_IS_3,
        )
        g_ptrs = (
            G
            + b.to(tl.int64) * stride_gb
            + offs_n[:, None].to(tl.int64) * stride_gn
            + (h * D + offs_d)[None, :] * stride_gc
        )
        g = tl.load(g_ptrs, mask=mask, other=0.0).to(tl.float32)
        num = tl.dot(y, kv, input_precision=DOT_PRECISION)
        den = tl.sum(y * ksum[None, :], axis=1) + eps * norm_y / (m * norm_u)
        r1 = g / den[:, None]  # ∂L/∂num
        r2 = -tl.sum(g * num, axis=1) / (den * den)  # ∂L/∂den
        dkv = tl.dot(tl.trans(y), r1, dkv, input_precision=DOT_PRECISION)
        dksum += tl.sum(y * r2[:, None], axis=0)
        grad_y = tl.dot(r1, tl.trans(kv), input_precision=DOT_PRECISION) + r2[:, None] * ksum[None, :]
        gy_ptrs = GRAD_Y + (b.to(tl.int64) * N + offs_n[:, None]) * C + (h * D + offs_d)[None, :]
        tl.store(gy_ptrs, grad_y, mask=mask)
    part = pid_bh * tl.num_programs(1) + pid_s
    dd = offs_d[:, None] * BLOCK_D + offs_d[None, :]
    tl.store(DKV_PART + part.to(tl.int64) * BLOCK_D * BLOCK_D + dd, dkv)
    tl.store(DKS_PART + part.to(tl.int64) * BLOCK_D + offs_d, dksum)


@triton.jit
def _bwd_kv_kernel(
    K,
    stride_kb,
    stride_kn,
    stride_kc,
    V,
    stride_vb,
    stride_vn,
    stride_vc,
    INV_S,
    K_STATS,
    DKV,
    DKS,
    GRAD_PHI,
    GRAD_V,
    stride_dvb,
    stride_dvn,
    stride_dvc,
    N,
    C,
    H,
    D,
    p,
    eps,
    HAS_SCALE: tl.constexpr,
    P_IS_3: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    WRITE_DV: tl.constexpr,
    WRITE_GRAD_PHI: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """∂L/∂v = φ(k) ∂L/∂kv and ∂L/∂φ(k) = v ∂L/∂kvᵀ + ∂L/∂Σk for one tile (both already / N)."""
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask = mask_n[:, None] & mask_d[None, :]
    ch = h * D + offs_d
    dkv = tl.load(DKV + pid_bh.to(tl.int64) * BLOCK_D * BLOCK_D + offs_d[:, None] * BLOCK_D + offs_d[None, :])
    if WRITE_DV:
        _, y, m, norm_u, norm_y = _head_features(
            K,
            stride_kb,
            stride_kn,
            stride_kc,
            K_STATS,
            INV_S,
            b,
            h,
            offs_n,
            mask_n,
            offs_d,
            mask_d,
            N,
            D,
            p,
            eps,
            HAS_SCALE,
            P_IS_3,
        )
        phi = y * (m * norm_u / norm_y)[:, None]
        dv = tl.dot(phi, dkv, input_precision=DOT_PRECISION)
        dv_ptrs = (
            GRAD_V
            + b.to(tl.int64) * stride_dvb
            + offs_n[:, None].to(tl.int64) * stride_dvn
            + ch[None, :] * stride_dvc
        )
        tl.store(dv_ptrs, dv.to(GRAD_V.dtype.element_ty), mask=mask)
    if WRITE_GRAD_PHI:
        dksum = tl.load(DKS + pid_bh.to(tl.int64) * BLOCK_D + offs_d)
        v_ptrs = (
            V
            + b.to(tl.int64) * stride_vb
            + offs_n[:, None].to(tl.int64) * stride_vn
            + ch[None, :] * stride_vc
        )
        v = tl.load(v_ptrs, mask=mask, other=0.0).to(tl.float32)
        grad_phi = tl.dot(v, tl.trans(dkv), input_precision=DOT_PRECISION) + dksum[None, :]
        gp_ptrs = GRAD_PHI + (b.to(tl.int64) * N + offs_n[:, None]) * C + ch[None, :]
        tl.store(gp_ptrs, grad_phi, mask=mask)


@triton.jit
def _focus_bwd_kernel(
    X,
    stride_xb,
    stride_xn,
    stride_xc,
    INV_S,
    STATS,
    GRAD_F,
    GRAD_X,
    stride_gxb,
    stride_gxn,
    stride_gxc,
    DS_PART,
    N,
    C,
    p,
    eps,
    IS_QUERY: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    P_IS_3: tl.constexpr,
    WRITE_DX: tl.constexpr,
    WRITE_DS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Steps 5, 4, 3 backwards for a token tile over all C channels.

    GRAD_F holds ∂L/∂y (queries: prefactor 1/m) or ∂L/∂φ (keys: prefactor ‖u‖/‖y‖), float32
    [B, N, C]. ∂L/∂x' = prefactor (p uᵖ⁻¹ (g − s y / ‖y‖²) + s u / ‖u‖²), s = g · y over C.
    """
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    m, norm_u, norm_y = _load_stats(STATS, pid_b.to(tl.int64) * N, offs_n, mask_n)
    x_base = X + pid_b.to(tl.int64) * stride_xb + offs_n[:, None].to(tl.int64) * stride_xn
    g_base = GRAD_F + (pid_b.to(tl.int64) * N + offs_n[:, None]) * C

    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_n[:, None] & mask_c[None, :]
        a = tl.load(x_base + offs_c[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
        xp = _kernel_feature(a, _load_inv_scale(INV_S, offs_c, mask_c, HAS_SCALE)[None, :], mask, eps)
        y = tl.where(mask, _pow(tl.where(mask, xp / m[:, None], 1.0), p, P_IS_3), 0.0)
        g = tl.load(g_base + offs_c[None, :], mask=mask, other=0.0)
        s += tl.sum(g * y, axis=1)

    prefactor = 1.0 / m if IS_QUERY else norm_u / norm_y
    coef_y = s / (norm_y * norm_y)
    coef_u = s / (norm_u * norm_u)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mask = mask_n[:, None] & mask_c[None, :]
        a = tl.load(x_base + offs_c[None, :] * stride_xc, mask=mask, other=0.0).to(tl.float32)
        inv_s = _load_inv_scale(INV_S, offs_c, mask_c, HAS_SCALE)
        xp = _kernel_feature(a, inv_s[None, :], mask, eps)
        u = tl.where(mask, xp / m[:, None], 1.0)  # 1 on padding: no log2(0)
        y = _pow(u, p, P_IS_3)
        g = tl.load(g_base + offs_c[None, :], mask=mask, other=0.0)
        grad_xp = p * _pow_minus_one(u, p, P_IS_3) * (g - coef_y[:, None] * y) + coef_u[:, None] * u
        grad_xp = tl.where(mask, grad_xp * prefactor[:, None], 0.0)
        if WRITE_DS:  # ∂L/∂s = −Σ ∂L/∂x' x' / s: the host applies −1/s
            tl.store(
                DS_PART + (pid_b * tl.num_programs(1) + pid_n).to(tl.int64) * C + offs_c,
                tl.sum(grad_xp * xp, axis=0),
                mask=mask_c,
            )
        if WRITE_DX:
            grad_a = tl.where(a > 0.0, grad_xp * inv_s[None, :], 0.0)  # ReLU's gradient, as torch's
            gx_ptrs = (
                GRAD_X
                + pid_b.to(tl.int64) * stride_gxb
                + offs_n[:, None].to(tl.int64) * stride_gxn
                + offs_c[None, :] * stride_gxc
            )
            tl.store(gx_ptrs, grad_a.to(GRAD_X.dtype.element_ty), mask=mask)


# --- host side --------------------------------------------------------------------------------


class _Launch:
    """Block sizes and grids for one problem shape."""

    def __init__(self, q: torch.Tensor, num_heads: int, p: float):
        self.batch, self.tokens, self.channels = q.shape
        self.heads = num_heads
        self.head_dim = self.channels // num_heads
        self.block_d = max(16, triton.next_power_of_2(self.head_dim))
        self.block_n = 64 if self.block_d <= 64 else 32  # register budget of the tl.dot tiles
        self.block_c = min(128, max(16, triton.next_power_of_2(self.channels)))
        self.block_n_rows = 16  # token tile of the all-channel kernels (stats, focus backward)
        self.tiles = triton.cdiv(self.tokens, self.block_n)
        self.tiles_per_program = 4  # token ranges of the accumulating kernels: enough programs on a GPU
        self.splits = triton.cdiv(self.tiles, self.tiles_per_program)
        self.p_is_3 = p == 3.0
        self.precision = "ieee" if q.dtype == torch.float32 else "tf32"

    def rows_grid(self) -> tuple[int, int]:
        return (self.batch, triton.cdiv(self.tokens, self.block_n_rows))


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _stats(x: torch.Tensor, inv_s: torch.Tensor, has_scale: bool, p: float, eps: float, ln: _Launch):
    stats = torch.empty(ln.batch, ln.tokens, 3, dtype=torch.float32, device=x.device)
    _stats_kernel[ln.rows_grid()](
        x,
        *_strides(x),
        inv_s,
        stats,
        ln.tokens,
        ln.channels,
        p,
        eps,
        HAS_SCALE=has_scale,
        P_IS_3=ln.p_is_3,
        BLOCK_N=ln.block_n_rows,
        BLOCK_C=ln.block_c,
    )
    return stats


def _focus_backward(x, inv_s, has_scale, stats, grad_f, grad_x, ds_part, is_query, p, eps, ln: _Launch):
    dummy = grad_f
    _focus_bwd_kernel[ln.rows_grid()](
        x,
        *_strides(x),
        inv_s,
        stats,
        grad_f,
        dummy if grad_x is None else grad_x,
        *(_strides(grad_x) if grad_x is not None else (0, 0, 0)),
        dummy if ds_part is None else ds_part,
        ln.tokens,
        ln.channels,
        p,
        eps,
        IS_QUERY=is_query,
        HAS_SCALE=has_scale,
        P_IS_3=ln.p_is_3,
        WRITE_DX=grad_x is not None,
        WRITE_DS=ds_part is not None,
        BLOCK_N=ln.block_n_rows,
        BLOCK_C=ln.block_c,
    )


class FocusedLinearAttentionTriton(torch.autograd.Function):
    """(q, k, v, scale, num_heads, p, eps) -> out; saves the inputs, the per-token stats and the
    [B·h, d, d] / [B·h, d] state."""

    @staticmethod
    def forward(ctx, q, k, v, scale, num_heads, p, eps):  # type: ignore[override]
        ln = _Launch(q, num_heads, p)
        has_scale = scale is not None
        inv_s = (
            scale.detach().float().reciprocal().contiguous()
            if has_scale
            else torch.ones(1, dtype=torch.float32, device=q.device)
        )
        q_stats = _stats(q, inv_s, has_scale, p, eps, ln)
        k_stats = _stats(k, inv_s, has_scale, p, eps, ln)

        bh, bd = ln.batch * ln.heads, ln.block_d
        kv_part = torch.empty(bh, ln.splits, bd, bd, dtype=torch.float32, device=q.device)
        ks_part = torch.empty(bh, ln.splits, bd, dtype=torch.float32, device=q.device)
        _kv_kernel[(bh, ln.splits)](
            k,
            *_strides(k),
            v,
            *_strides(v),
            inv_s,
            k_stats,
            kv_part,
            ks_part,
            ln.tokens,
            ln.heads,
            ln.head_dim,
            p,
            eps,
            ln.tiles_per_program,
            HAS_SCALE=has_scale,
            P_IS_3=ln.p_is_3,
            DOT_PRECISION=ln.precision,
            BLOCK_N=ln.block_n,
            BLOCK_D=bd,
        )
        kv = kv_part.sum(dim=1).div_(ln.tokens)  # the N^-½ · N^-½ of step 8
        ksum = ks_part.sum(dim=1).div_(ln.tokens)

        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        _out_kernel[(bh, ln.tiles)](
            q,
            *_strides(q),
            inv_s,
            q_stats,
            kv,
            ksum,
            out,
            *_strides(out),
            ln.tokens,
            ln.heads,
            ln.head_dim,
            p,
            eps,
            HAS_SCALE=has_scale,
            P_IS_3=ln.p_is_3,
            DOT_PRECISION=ln.precision,
            BLOCK_N=ln.block_n,
            BLOCK_D=bd,
        )
        ctx.save_for_backward(q, k, v, scale, inv_s, q_stats, k_stats, kv, ksum)
        ctx.hyper = (num_heads, p, eps)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, scale, inv_s, q_stats, k_stats, kv, ksum = ctx.saved_tensors
        num_heads, p, eps = ctx.hyper
        need_q, need_k, need_v, need_s = ctx.needs_input_grad[:4]
        ln = _Launch(q, num_heads, p)
        has_scale = scale is not None
        bh, bd = ln.batch * ln.heads, ln.block_d
        grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device) if need_q else None
        grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device) if need_k else None
        grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v else None
        rows = ln.batch * triton.cdiv(ln.tokens, ln.block_n_rows)
        ds_q = torch.empty(rows, ln.channels, dtype=torch.float32, device=q.device) if need_s else None
        ds_k = torch.empty_like(ds_q) if need_s else None

        # Queries: ∂L/∂y(q) into a float32 [B, N, C] buffer, partial ∂L/∂[kᵀv | Σk] per token range.
        grad_f = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        dkv_part = torch.empty(bh, ln.splits, bd, bd, dtype=torch.float32, device=q.device)
        dks_part = torch.empty(bh, ln.splits, bd, dtype=torch.float32, device=q.device)
        _bwd_q_kernel[(bh, ln.splits)](
            q,
            *_strides(q),
            grad_out,
            *_strides(grad_out),
            inv_s,
            q_stats,
            kv,
            ksum,
            grad_f,
            dkv_part,
            dks_part,
            ln.tokens,
            ln.channels,
            ln.heads,
            ln.head_dim,
            p,
            eps,
            ln.tiles_per_program,
            HAS_SCALE=has_scale,
            P_IS_3=ln.p_is_3,
            DOT_PRECISION=ln.precision,
            BLOCK_N=ln.block_n,
            BLOCK_D=bd,
        )
        if need_q or need_s:
            _focus_backward(q, inv_s, has_scale, q_stats, grad_f, grad_q, ds_q, True, p, eps, ln)

        # Keys and values, from ∂L/∂[kᵀv | Σk] / N.
        if need_k or need_v or need_s:
            dkv = dkv_part.sum(dim=1).div_(ln.tokens)
            dks = dks_part.sum(dim=1).div_(ln.tokens)
            write_phi = need_k or need_s
            _bwd_kv_kernel[(bh, ln.tiles)](
                k,
                *_strides(k),
                v,
                *_strides(v),
                inv_s,
                k_stats,
                dkv,
                dks,
                grad_f,
                grad_f if grad_v is None else grad_v,
                *(_strides(grad_v) if grad_v is not None else (0, 0, 0)),
                ln.tokens,
                ln.channels,
                ln.heads,
                ln.head_dim,
                p,
                eps,
                HAS_SCALE=has_scale,
                P_IS_3=ln.p_is_3,
                DOT_PRECISION=ln.precision,
                WRITE_DV=need_v,
                WRITE_GRAD_PHI=write_phi,
                BLOCK_N=ln.block_n,
                BLOCK_D=bd,
            )
            if write_phi:
                _focus_backward(k, inv_s, has_scale, k_stats, grad_f, grad_k, ds_k, False, p, eps, ln)

        grad_s = None
        if need_s:
            grad_s = ((ds_q.sum(dim=0) + ds_k.sum(dim=0)) * inv_s).neg_().to(scale.dtype)
        return grad_q, grad_k, grad_v, grad_s, None, None, None


def focused_linear_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    scale: torch.Tensor | None = None,
    focusing_factor: float = 3.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """q, k, v [B, N, C] (float16/bfloat16/float32, CUDA or the interpreter), scale [C] or None."""
    return FocusedLinearAttentionTriton.apply(q, k, v, scale, num_heads, float(focusing_factor), float(eps))
