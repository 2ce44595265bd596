"""The GPU proof's pieces stay runnable on a CPU (CI has no GPU), and the precision rule holds."""

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import gpu
from jsoftmax._engine import matmul


def test_float32_products_at_full_precision_16bit_on_tensor_cores():
    a32 = jnp.ones((4, 3), jnp.float32)
    hlo32 = jax.jit(matmul).lower(a32, a32.T).as_text()
    hlo16 = jax.jit(matmul).lower(a32.astype(jnp.bfloat16), a32.T.astype(jnp.bfloat16)).as_text()
    assert "HIGHEST" in hlo32
    assert "HIGHEST" not in hlo16 and "bf16" in hlo16 and "-> tensor<4x4xf32>" in hlo16


def test_lmhead_part_and_report_on_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu, "QUICK_SHAPES", [(128, 16, 300)])
    monkeypatch.setattr(gpu, "QUICK_CHUNK_SWEEP", (64,))
    monkeypatch.setattr(gpu, "_fresh_peak", lambda *args: {"device_peak_bytes": 10**6})
    part = gpu.part_lmhead(quick=True)
    rows = {r["variant"]: r for r in part["results"]}
    assert set(rows) == {"floor", "chunked", "naive_jax_grad", "optax_jax_grad", "chunked_rows64"}
    assert rows["floor"]["ratio_to_floor"] == pytest.approx(1.0)
    agreement = rows["chunked"]["agreement_vs_naive"]
    assert agreement["loss"] < 1e-3 and agreement["dx"] < 2e-2 and agreement["dW"] < 2e-2
    payload = {"command": "python -m benchmarks.gpu --quick", "quick": True, "machine": gpu.machine(),
               "parts": {"lmhead": {"returncode": 0, "seconds": 1.0, **part},
                         "tests": {"returncode": 1, "summary": "1 failed", "failures": ["FAILED t::x"]}}}
    text = gpu.summary_markdown(json.loads(json.dumps(payload, default=float)))
    assert "| (128, 16, 300) | chunked |" in text and "1 failed" in text and "FAILED t::x" in text
