"""The GPU proof's pieces stay runnable on a CPU (CI has no GPU), and the precision rule holds."""

import json
import time

import jax
import jax.numpy as jnp
import pytest

from benchmarks import gpu
from jsoftmax._engine import matmul


def test_float32_products_at_full_precision_16bit_on_tensor_cores(monkeypatch):
    a32 = jnp.ones((4, 3), jnp.float32)
    hlo32 = jax.jit(matmul).lower(a32, a32.T).as_text()
    assert "HIGHEST" in hlo32
    # (Shapes of their own: the platform is read when a product is traced, and traces are kept.)
    # On an accelerator a 16-bit product runs on the tensor cores, accumulating in float32.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    a16 = jnp.ones((4, 7), jnp.bfloat16)
    hlo16 = jax.jit(matmul).lower(a16, a16.T).as_text()
    assert "HIGHEST" not in hlo16 and "bf16" in hlo16 and "-> tensor<4x4xf32>" in hlo16
    # A CPU has no 16-bit matrix units (nor a batched 16-bit product): the operands are widened
    # exactly to float32 and multiplied at full precision.
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    a16 = jnp.ones((4, 9), jnp.bfloat16)
    hlo_cpu = jax.jit(matmul).lower(a16, a16.T).as_text()
    assert "HIGHEST" in hlo_cpu and "convert" in hlo_cpu


def test_lmhead_part_and_report_on_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu, "QUICK_SHAPES", [(128, 16, 300)])
    monkeypatch.setattr(gpu, "QUICK_CHUNK_SWEEP", (64,))
    monkeypatch.setattr(gpu, "QUICK_MEMORY_NS", (64, 128))
    monkeypatch.setattr(gpu, "_fresh_peak", lambda *args: {"device_peak_bytes": 10**6})
    part = gpu.part_lmhead(quick=True, out=tmp_path)
    kept = json.loads((tmp_path / "part-lmhead.json").read_text())  # what a cut run would keep
    assert len(kept["results"]) == len(part["results"]) and len(kept["memory_vs_n"]) == 6
    rows = {r["variant"]: r for r in part["results"]}
    assert set(rows) == {"floor", "chunked", "naive_jax_grad", "optax_jax_grad", "chunked_rows64",
                         *gpu.OPTION_VARIANTS}
    assert all("median_s" in row for row in rows.values()), rows
    assert rows["floor"]["ratio_to_floor"] == pytest.approx(1.0)
    for name in ("chunked", "chunked_f32_dW", "chunked_bf16_dW", "chunked_recompute"):
        agreement = rows[name]["agreement_vs_naive"]
        assert agreement["loss"] < 1e-3 and agreement["dx"] < 2e-2 and agreement["dW"] < 2e-2, name
    assert rows["chunked"]["result_devices"] == [jax.devices()[0].platform]
    assert rows["chunked"]["host_transfers_in_hlo"] == []  # check_values=False: nothing leaves the device
    memory = {(r["n"], r["variant"]): r["temp_bytes"] for r in part["memory_vs_n"]}
    assert set(memory) == {(n, v) for n in (64, 128) for v in ("chunked", "optax_jax_grad", "floor")}
    checks = part["check_values"]
    callbacks = checks["host_callbacks_in_hlo"]  # inside jit: checks only with JSOFTMAX_CHECK_TRACED=1
    assert len(callbacks["True+traced"]) > 0 == len(callbacks["True"]) == len(callbacks["False"])
    torch_rows = [{"shape": [128, 16, 300], "variant": v, "median_ms": t, "peak_beyond_bytes": 2**20}
                  for v, t in (("torch_floor", 1.0), ("liger_flce", 2.0), ("cce", 4.0))]
    payload = {"command": "python -m benchmarks.gpu --quick", "quick": True, "machine": gpu.machine(),
               "parts": {"lmhead": {"returncode": 0, "seconds": 1.0, **part},
                         "torch": {"returncode": 0, "results": torch_rows},
                         "tests": {"returncode": 1, "summary": "1 failed", "failures": ["FAILED t::x"]}}}
    payload = json.loads(json.dumps(payload, default=float))
    text = gpu.summary_markdown(payload)
    assert "| (128, 16, 300) | chunked |" in text and "1 failed" in text and "FAILED t::x" in text
    assert "| (128, 16, 300) | chunked | liger_flce |" in text and "| (128, 16, 300) | chunked | cce |" in text
    assert "### Memory vs N" in text and "### check_values" in text
    assert gpu.write_plot(payload, tmp_path / "lmhead.png") and (tmp_path / "lmhead.png").stat().st_size > 1000


def test_dry_run_flag_is_the_quick_run(tmp_path):
    out = tmp_path / "gpu"
    assert gpu.main(["--dry-run", "--out", str(out), "--parts", "torch", "--budget-s", "120"]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["quick"] is True and set(payload["parts"]) == {"torch"}
    torch_part = payload["parts"]["torch"]
    assert torch_part["returncode"] == 0 and (torch_part["results"] or torch_part["skipped"])
    assert (out / "summary.md").exists()


def test_sparse_part_reports_device_peaks_and_what_ran_out_of_time(monkeypatch, tmp_path):
    import time

    from benchmarks.suites import sparse as suite_sparse

    fake = {"fit_s": [2.0, 1.0], "growth_bytes": [3 * 2**20, 2**20], "objective": 10.0, "n_iter": 5,
            "converged": True, "device": "gpu", "device_peak_bytes": 4 * 2**20}
    calls = []

    def child(x_path, y_path, sklearn, solver, timeout_s=3600):
        calls.append((sklearn, solver, timeout_s))
        return dict(fake, device=None, device_peak_bytes=None, fit_s=[4.0]) if sklearn else fake

    monkeypatch.setattr(suite_sparse, "child", child)
    kept = []
    payload = suite_sparse.run(quick=True, on_result=lambda p: kept.append(len(p["results"])))
    assert kept == [1, 2] and [c[:2] for c in calls] == [(True, None), (False, "newton-cg"), (False, "lbfgs")]
    text = suite_sparse.markdown(payload)
    assert "device peak" in text and "on gpu" in text and "**0.25×**" in text
    # Past the deadline nothing starts, and the report says what was skipped.
    late = suite_sparse.run(quick=True, deadline=time.monotonic() - 1)
    assert late["results"] == [] and late["skipped"] == ["small"]
    assert "Skipped (out of time): small." in suite_sparse.markdown(late)
    summary = gpu.summary_markdown({"command": "c", "quick": True, "machine": gpu.machine(),
                                    "parts": {"sparse": {"returncode": 0, **payload}}})
    assert "## Sparse fits vs scikit-learn" in summary


def test_probe_part_dry_run(tmp_path):
    # The linear-probe part at small shapes on this machine: every column it reports is filled.
    out = tmp_path / "gpu"
    assert gpu.main(["--dry-run", "--out", str(out), "--parts", "probe", "--budget-s", "240"]) == 0
    payload = json.loads((out / "results.json").read_text())
    probe = payload["parts"]["probe"]
    assert probe["returncode"] == 0 and not probe["skipped"], probe.get("error_tail")
    assert [(r["problem"], r["dtype"]) for r in probe["results"]] == [
        ("imnet", "float32"), ("imnet", "bfloat16"), ("places", "float32"), ("places", "bfloat16")]
    for row in probe["results"]:
        assert row["val_accuracy"] > 1.5 / row["shape"][2]  # the planted model is learned
        assert len(row["search"]["val_accuracy"]) == 8 and row["search"]["refit_val_accuracy"] > 0
        assert row["stop_reason"] in ("gtol", "stalled")
        # The same problem fitted from host memory in a child process: the same fit.
        offload = row["offload"]
        assert "error" not in offload, offload.get("error")
        assert offload["feature_memory"] == "host" and offload["chose_host"]
        assert offload["n_iter"] == row["n_iter"] and offload["floor_s"] > 0
        assert offload["loss"] == pytest.approx(row["objective"], rel=1e-3 if row["dtype"] == "bfloat16" else 1e-5)
    float32 = [r for r in probe["results"] if r["dtype"] == "float32"]
    assert all(r["sklearn"]["objective"] is not None for r in float32)
    # scikit-learn's objective is the same function as ours: at convergence they agree.
    for row in float32:
        if row["sklearn"]["converged"]:
            assert row["sklearn"]["objective"] == pytest.approx(row["objective"], rel=1e-3)
    summary = (out / "summary.md").read_text()
    assert "## Linear probes" in summary and "### X in host memory" in summary


def test_penalties_part_dry_run_and_what_ran_out_of_time(tmp_path):
    # The penalties part at small sizes, through the driver (a child process, its rows written as
    # they land), then a run past its deadline: nothing starts and the report names what was skipped.
    from benchmarks.suites import penalties as suite_penalties

    out = tmp_path / "gpu"
    assert gpu.main(["--dry-run", "--out", str(out), "--parts", "penalties", "--budget-s", "240"]) == 0
    part = json.loads((out / "results.json").read_text())["parts"]["penalties"]
    assert part["returncode"] == 0 and not part["skipped"], part.get("error_tail")
    assert [r["problem"] for r in part["fits"]] == ["wine", "small (sparse)"]
    assert all(r["kkt"] <= 1e-8 and r["gap"] >= -1e-12 for r in part["fits"])
    assert part["searches"][0]["problem"] == "wine" and part["path"]["n_strengths"] == 20
    summary = (out / "summary.md").read_text()
    assert "## L1 and elastic-net fits: jsoftmax (OWL-QN on cpu" in summary and "## The (l1_ratio × C × fold)" in summary
    late = suite_penalties.run(quick=True, deadline=time.monotonic() - 1)
    assert late["fits"] == [] and late["path"] is None
    assert late["skipped"] == ["wine ρ=1 C=0.1", "search", "path", "small (sparse)"]
    assert "Skipped (out of time): wine ρ=1 C=0.1, search, path, small (sparse)." in suite_penalties.markdown(late)
