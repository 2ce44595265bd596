"""check_gradient's report and the `jsoftmax verify` command."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax
from jsoftmax import _verify, cli

from ..helpers import make_problem


def test_report_rows_cover_every_step(x64):
    W, b, X, y = make_problem(12, 4, 5, seed=0, bias=True)
    report = jsoftmax.check_gradient(jsoftmax.Params(W, b), X, y, l2=0.1)
    steps = [row.step for row in report.rows]
    assert steps == ["1", "2", "3", "3", "3", "3", "4", "4", "5", "5"]
    assert report.passed
    for row in report.rows[:6] + report.rows[8:]:
        assert row.rel_error <= 1e-12, row
    as_dict = report.to_dict()
    assert as_dict["passed"] and len(as_dict["rows"]) == 10
    json.dumps(as_dict)  # serialisable
    table = str(report)
    assert "dR/dW" in table and "central differences" in table and "FAIL" not in table
    assert "H_W V" in table and "jvp of grad" in table


def test_report_detects_a_wrong_gradient(x64, monkeypatch):
    # A check that cannot fail proves nothing: break the kernel and the report must say so.
    from jsoftmax import _engine

    original = _engine.evaluate

    def wrong(*args, **kwargs):
        full = original(*args, **kwargs)
        return full._replace(gW=None if full.gW is None else full.gW * 1.001)

    monkeypatch.setattr(_engine, "evaluate", wrong)
    W, _, X, y = make_problem(11, 4, 3, seed=1)
    # Shapes used by no other test, so the broken body is traced afresh.
    report = jsoftmax.check_gradient(W, X, y, l2=0.123)
    failed = {row.quantity for row in report.rows if not row.passed}
    assert any(q.startswith("dR/dW") for q in failed)
    assert not report.passed


def test_float32_report_uses_float32_tolerances():
    W, _, X, y = make_problem(30, 6, 4, seed=2, dtype=jnp.float32, soft=True)
    report = jsoftmax.check_gradient(W, X, y)
    assert report.problem["dtype"] == "float32"
    assert report.passed, str(report)
    assert all(row.tolerance == "scaled <= 1e-05" for row in report.rows if row.step != "4")


def test_cli_verify_small_grid(capsys):
    code = cli.main(["verify", "--sizes", "5x3x2,9x4x3", "--options", "plain", "all"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ALL PASSED" in out and "float64" in out and "float32" in out


def test_cli_verify_json(capsys):
    code = cli.main(["verify", "--sizes", "6x3x3", "--dtype", "float64", "--options", "bias", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["passed"]
    assert {row["step"] for row in payload["summary"]} == {"1", "2", "3", "4", "5"}
    assert max(row["rel_error"] for row in payload["summary"] if row["step"] != "4") <= 1e-12


def test_cli_verify_exit_code_is_one_on_failure(capsys, monkeypatch):
    def failing(*args, **kwargs):
        row = _verify.CheckRow("3", "dR/dW", "jax.grad", 1.0, 1.0, 1.0, "scaled <= 1e-12", False)
        return [_verify.GradientReport({"dtype": "float64"}, (row,))]

    monkeypatch.setattr(_verify, "verify_grid", failing)
    assert cli.main(["verify"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_cli_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        cli.main(["verify", "--sizes", "5x3"])


def test_softmax_jacobian_rows_sum_to_zero(x64):
    z = jnp.asarray(np.random.default_rng(0).standard_normal(6))
    J = _verify.softmax_jacobian(z)
    np.testing.assert_allclose(J.sum(axis=0), 0, atol=1e-15)
    np.testing.assert_allclose(J, J.T, atol=0)
