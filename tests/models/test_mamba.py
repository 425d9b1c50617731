"""The Mamba: the parallel scans equal the step-by-step recurrence; TorchScript equals eager."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from stream_infer.models import MambaClassifier, MambaConfig
from stream_infer.models._mamba import (
    A_MAX,
    CHUNK,
    DELTA_MAX,
    _scan_chunked,
    _scan_weights_last,
    selective_scan_ref,
)


@pytest.mark.parametrize("seq", [1, 5, CHUNK, 64, 70])
def test_chunked_scan_equals_recurrence(seq: int) -> None:
    g = torch.Generator().manual_seed(seq)
    # Extremes of the allowed range: decays down to exp(-DELTA_MAX * A_MAX) per step.
    delta = torch.rand(3, 6, seq, generator=g) * DELTA_MAX
    a = torch.rand(6, 4, generator=g) * A_MAX
    u = torch.randn(3, 6, 4, seq, generator=g)
    ref = selective_scan_ref(delta, a, u)
    tri = torch.triu(torch.ones(CHUNK, CHUNK))
    got = _scan_chunked(delta, a, u, tri)
    assert got.shape == ref.shape
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    sl = torch.tril(torch.ones(seq, seq), -1)
    last = (_scan_weights_last(delta, a, sl) * u).sum(-1)
    assert (last - ref[..., -1]).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_scan_at_the_clamp_limits_stays_finite() -> None:
    seq = 64
    delta = torch.full((2, 3, seq), DELTA_MAX)
    a = torch.full((3, 2), A_MAX)
    u = torch.full((2, 3, 2, seq), 1e3)
    got = _scan_chunked(delta, a, u, torch.triu(torch.ones(CHUNK, CHUNK)))
    ref = selective_scan_ref(delta, a, u)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-3)


def _model(**kw: int) -> MambaClassifier:
    torch.manual_seed(0)
    return MambaClassifier(MambaConfig(**kw)).eval()


def test_default_size_and_outputs() -> None:
    m = _model()
    n = sum(p.numel() for p in m.parameters())
    assert 15_000 <= n <= 50_000
    x = torch.randn(5, 64, 27, dtype=torch.float64)
    with torch.inference_mode():
        out = m(x)
    assert out.shape == (5, 3) and out.dtype == torch.float32


def test_torchscript_equals_eager_and_rows_are_independent() -> None:
    m = _model(d_state=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sm = torch.jit.script(m)
    x = torch.randn(7, 64, 27, dtype=torch.float64)
    with torch.inference_mode():
        e, s = m(x), sm(x)
        one = sm(x[3:4])
    assert (e - s).abs().max().item() <= 1e-6
    # A window's output does not depend on the other windows of its batch.
    assert (one - s[3:4]).abs().max().item() <= 1e-6


def test_normalisation_is_inside_and_clipped() -> None:
    cfg = MambaConfig(d_state=4, d_model=8, n_layers=1)
    mean = torch.linspace(-1, 1, 27, dtype=torch.float64)
    std = torch.linspace(0.5, 2, 27, dtype=torch.float64)
    m = MambaClassifier(cfg, mean, std).eval()
    x = mean.expand(2, 64, 27).clone()
    x[1, -1] = mean + 1e6 * std  # far outside: clipped to +clip after normalisation
    y = x.clone()
    y[1, -1] = mean + cfg.clip * std
    with torch.inference_mode():
        assert torch.equal(m(x), m(y))
        assert torch.isfinite(m(x)).all()


def test_output_depends_on_the_whole_window() -> None:
    m = _model(d_state=8)
    x = torch.randn(1, 64, 27, dtype=torch.float64)
    y = x.clone()
    y[0, 0] += 3.0  # the oldest row
    with torch.inference_mode():
        assert not torch.equal(m(x), m(y))


def test_training_is_reproducible() -> None:
    def run() -> np.ndarray:
        torch.manual_seed(1)
        m = MambaClassifier(MambaConfig(d_model=8, d_state=4, n_layers=2, seq_len=16))
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(2)
        x = torch.randn(32, 16, 27, dtype=torch.float64, generator=g)
        y = (torch.rand(32, 3, generator=g) > 0.5).float()
        for _ in range(3):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in m.parameters()]).numpy()

    assert np.array_equal(run(), run())
