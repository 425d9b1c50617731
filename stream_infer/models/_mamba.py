"""A small Mamba-1 style selective state-space classifier in plain PyTorch (TorchScript-able).

Input: RAW feature windows (B, L, F), float64 or float32. The model normalises them itself
with buffers taken from the training split (mean, std, clip; the same numbers are written to
normalization_params_v1.json), so the runtime hands it the rows the feature engine produced.
Output: one logit per horizon (B, H), read from the last time step.

The selective scan (Gu & Dao 2023, Mamba-1): per channel e and state n,
``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t``, ``y_t = C_t . h_t + D * x_t``,
with A = -exp(A_log) and delta, B, C functions of the input. It runs without a per-step
Python loop. Because delta is per channel and A per (channel, state), the log-decay between
steps s and t factorises: sum_{s<k<=t} delta_k * A = (Delta_t - Delta_s) * A with Delta the
cumulative sum of delta, so cumulative sums run on (B, E, L), never on (B, E, N, L). Inside
chunks of ``CHUNK`` steps the state is a cumulative sum in log space around the chunk's
midpoint; only the ``L / CHUNK`` chunk states are carried in a (scripted) loop. To keep both
exponentials of that form inside float32's range, delta <= ``DELTA_MAX`` and -A <= ``A_MAX``
(a step's log-decay is at most 8: such a state has forgotten anyway). The last block only
needs the state at the last step: one weighted sum with weights <= 1, no chunking.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stream_infer.models._manifest import SEQ_LEN

__all__ = ["A_MAX", "CHUNK", "DELTA_MAX", "MambaClassifier", "MambaConfig", "selective_scan_ref"]

CHUNK = 16
DELTA_MAX = 0.25
A_MAX = 32.0


@dataclass(frozen=True)
class MambaConfig:
    """Architecture of ``MambaClassifier`` (recorded in the manifest)."""

    n_features: int = 27
    n_outputs: int = 3
    d_model: int = 32
    d_state: int = 16
    n_layers: int = 2
    expand: int = 2
    d_conv: int = 4
    seq_len: int = SEQ_LEN
    clip: float = 5.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scan_chunked(delta: Tensor, a: Tensor, u: Tensor, tri: Tensor) -> Tensor:
    """States h (B, E, N, L) of ``h_t = exp(-delta_t * a) h_{t-1} + u_t`` from a zero state.

    delta (B, E, L), a (E, N) > 0, u (B, E, N, L). ``tri`` is the (Q, Q) upper-triangular
    matrix of ones: ``x @ tri`` is a cumulative sum over chunks of Q steps (one 2-D matmul,
    far faster on CPU than ``cumsum`` over an inner dimension or a batch of tiny matmuls).
    """
    b, e, n, seq = u.shape
    q = tri.shape[0]
    pad = (-seq) % q
    if pad > 0:
        # Leading zero steps (no decay, no input) keep the state at zero.
        delta = torch.cat([delta.new_zeros([b, e, pad]), delta], dim=-1)
        u = torch.cat([u.new_zeros([b, e, n, pad]), u], dim=-1)
    total = seq + pad
    nc = total // q
    cum = (delta.reshape(-1, q) @ tri).reshape(b, e, 1, nc, q)  # Delta within each chunk
    mid = q // 2
    ref = cum[..., mid : mid + 1]
    a5 = a.reshape(1, e, n, 1, 1)
    # g = exp(s - ref) with s the chunk's cumulative log-decay; |s - ref| <= (Q/2) * 8.
    g = torch.exp((ref - cum) * a5)
    inner = ((u.reshape(b, e, n, nc, q) / g).reshape(-1, q) @ tri).reshape(b, e, n, nc, q)
    # Chunk c from a zero state ends at g_end * inner_end; a state entering it decays by
    # exp(s_end) = g_end * exp(ref).
    g_end = g[..., q - 1]
    eref = torch.exp(-ref.squeeze(-1) * a5.squeeze(-1))  # (B, E, N, nc)
    end_local = g_end * inner[..., q - 1]
    end_decay = g_end * eref
    carry = u.new_zeros([b, e, n])
    starts: list[Tensor] = []
    for c in range(nc):
        starts.append(carry)
        carry = end_local[..., c] + end_decay[..., c] * carry
    # h = g * inner + exp(s) * start = g * (inner + exp(ref) * start)
    h = g * (inner + (eref * torch.stack(starts, dim=-1)).unsqueeze(-1))
    return h.reshape(b, e, n, total)[..., pad:]


def _scan_weights_last(delta: Tensor, a: Tensor, strict_lower: Tensor) -> Tensor:
    """Weights w_s = exp(-a * sum_{k>s} delta_k) <= 1 (B, E, N, L) of the last state sum_s w_s u_s."""
    b, e, seq = delta.shape
    after = (delta.reshape(-1, seq) @ strict_lower).reshape(b, e, 1, seq)
    return torch.exp(-after * a.unsqueeze(-1))


def selective_scan_ref(delta: Tensor, a: Tensor, u: Tensor) -> Tensor:
    """Step-by-step reference of ``h_t = exp(-delta_t * a) h_{t-1} + u_t`` (tests only)."""
    h = u.new_zeros(u.shape[:-1])
    out = []
    for t in range(u.shape[-1]):
        h = torch.exp(-delta[..., t].unsqueeze(-1) * a) * h + u[..., t]
        out.append(h)
    return torch.stack(out, dim=-1)


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba block: in_proj -> causal depthwise conv -> SiLU -> selective
    scan -> gate with SiLU(z) -> out_proj. ``last_only`` blocks return the last step only."""

    if TYPE_CHECKING:  # buffers; TorchScript rejects class-level annotations of them
        tri: Tensor
        strict_lower: Tensor

    def __init__(self, cfg: MambaConfig, last_only: bool, seq_len: int) -> None:
        super().__init__()
        d_inner = cfg.expand * cfg.d_model
        self.d_inner = d_inner
        self.d_state = cfg.d_state
        self.dt_rank = max(1, math.ceil(cfg.d_model / 16))
        self.last_only = last_only
        self.norm = nn.LayerNorm(cfg.d_model)
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=False)
        # The module holds the weights (their names are the export format); forward runs
        # them through _causal_conv.
        self.conv = nn.Conv1d(
            d_inner, d_inner, cfg.d_conv, groups=d_inner, padding=cfg.d_conv - 1, bias=True
        )
        self.d_conv = cfg.d_conv
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * cfg.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        a = torch.arange(1, cfg.d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)
        self.delta_max = DELTA_MAX
        self.a_max = A_MAX
        self.register_buffer("tri", torch.triu(torch.ones(CHUNK, CHUNK)), persistent=False)
        self.register_buffer(
            "strict_lower", torch.tril(torch.ones(seq_len, seq_len), -1), persistent=False
        )
        self._init_dt()

    def _init_dt(self) -> None:
        # Mamba's init: delta = softplus(bias) log-uniform in [1e-3, 1e-1].
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _causal_conv(self, x: Tensor) -> Tensor:
        """The depthwise causal conv of ``self.conv`` as d_conv shifted multiply-adds, (B, E, L)
        in and out. The same sums as ``nn.Conv1d``; at batch 1 on CPU the oneDNN convolution
        costs more than the whole rest of a block (docs/models.md, Speed)."""
        seq = x.shape[-1]
        k = self.d_conv
        xp = F.pad(x, (k - 1, 0))
        w = self.conv.weight.squeeze(1)  # (E, k)
        bias = self.conv.bias
        assert bias is not None
        out = bias.unsqueeze(-1) + w[:, 0:1] * xp[:, :, 0:seq]
        for j in range(1, k):
            out = out + w[:, j : j + 1] * xp[:, :, j : j + seq]
        return out

    def forward(self, x: Tensor) -> Tensor:
        seq = x.shape[1]
        xz = self.in_proj(self.norm(x))
        xi, z = xz.split([self.d_inner, self.d_inner], dim=-1)
        xi = F.silu(self._causal_conv(xi.transpose(1, 2)))  # (B, E, L)
        dbc = self.x_proj(xi.transpose(1, 2))
        dt, bm, cm = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.clamp(F.softplus(self.dt_proj(dt)), max=self.delta_max)
        delta = delta.transpose(1, 2).contiguous()
        a = torch.clamp(torch.exp(self.A_log), max=self.a_max)  # -A, (E, N)
        v = delta * xi  # (B, E, L)
        if self.last_only:
            if self.strict_lower.shape[0] == seq:
                sl = self.strict_lower
            else:
                sl = torch.tril(torch.ones(seq, seq, dtype=x.dtype, device=x.device), -1)
            w = _scan_weights_last(delta, a, sl)  # (B, E, N, L)
            # y_T = sum_s sum_n w[e, n, s] C_T[n] B_s[n] v_s[e] + D x_T
            cb = (cm[:, -1:] * bm).transpose(1, 2).contiguous().unsqueeze(1)  # (B, 1, N, L)
            y = ((w * cb).sum(2) * v).sum(-1) + self.D * xi[:, :, -1]
            y = y * F.silu(z[:, -1])
            return x[:, -1:] + self.out_proj(y).unsqueeze(1)
        # Contiguous operands keep every (B, E, N, L) result in that layout (no hidden copies).
        u = v.unsqueeze(2) * bm.transpose(1, 2).contiguous().unsqueeze(1)  # (B, E, N, L)
        hs = _scan_chunked(delta, a, u, self.tri)
        ct = cm.transpose(1, 2).contiguous().unsqueeze(1)
        y = (hs * ct).sum(2) + self.D.unsqueeze(-1) * xi
        y = y.transpose(1, 2) * F.silu(z)
        return x + self.out_proj(y)


class MambaClassifier(nn.Module):
    """Raw feature window (B, L, F) -> one logit per horizon (B, H)."""

    if TYPE_CHECKING:
        norm_mean: Tensor
        norm_std: Tensor

    def __init__(
        self, cfg: MambaConfig, mean: Tensor | None = None, std: Tensor | None = None
    ) -> None:
        super().__init__()
        f = cfg.n_features
        self.register_buffer(
            "norm_mean", torch.zeros(f, dtype=torch.float64) if mean is None else mean.double()
        )
        self.register_buffer(
            "norm_std", torch.ones(f, dtype=torch.float64) if std is None else std.double()
        )
        self.clip = float(cfg.clip)
        self.n_features = f
        self.embed = nn.Linear(f, cfg.d_model)
        self.layers = nn.ModuleList(
            [
                MambaBlock(cfg, last_only=(i == cfg.n_layers - 1), seq_len=cfg.seq_len)
                for i in range(cfg.n_layers)
            ]
        )
        self.norm_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_outputs)

    def forward(self, windows: Tensor) -> Tensor:
        x = (windows.to(torch.float64) - self.norm_mean) / self.norm_std
        x = torch.clamp(x, -self.clip, self.clip).to(torch.float32)
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm_f(h[:, -1]))
