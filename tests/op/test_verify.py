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
    # Numbered as docs/derivation.md numbers its steps; the Hessian (§8) comes after them.
    steps = [(row.step, row.section) for row in report.rows]
    assert steps == [("1", "§2"), ("2", "§3"), ("3", "§4")] + [("4", "§4")] * 6 + [("", "§8")] * 2
    assert report.passed
    for row in report.rows:
        if row.against != "central differences":
            assert row.rel_error <= 1e-12, row
        assert row.of_tolerance <= 1, row
    as_dict = report.to_dict()
    assert as_dict["passed"] and len(as_dict["rows"]) == 11
    json.dumps(as_dict)  # serialisable (the rows' arrays stay out of it)
    table = str(report)
    assert "dR/dW = Xᵀ(Ŷ − Y)/N + λW" in table and "central differences" in table and "FAIL" not in table
    assert "H_W V" in table and "jvp of grad" in table and "§8" in table


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
    failed = {(row.step, row.name) for row in report.rows if not row.passed}
    assert ("4", "dR/dW") in failed
    assert not report.passed


def test_float32_report_uses_float32_tolerances():
    W, _, X, y = make_problem(30, 6, 4, seed=2, dtype=jnp.float32, soft=True)
    report = jsoftmax.check_gradient(W, X, y)
    assert report.problem["dtype"] == "float32"
    assert report.passed, str(report)
    assert all(row.tolerance == "scaled <= 1e-05" for row in report.rows if row.against != "central differences")


def test_cli_verify_small_grid(capsys):
    code = cli.main(["verify", "--sizes", "5x3x2,9x4x3", "--options", "plain", "all"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ALL PASSED" in out and "float64" in out and "float32" in out


def test_cli_verify_json(capsys):
    code = cli.main(["verify", "--sizes", "6x3x3", "--dtype", "float64", "--options", "bias", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["passed"]
    assert {row["step"] for row in payload["summary"]} == {"1", "2", "3", "4", ""}
    assert max(row["rel_error"] for row in payload["summary"] if row["against"] != "central differences") <= 1e-12


def test_cli_verify_exit_code_is_one_on_failure(capsys, monkeypatch):
    def failing(*args, **kwargs):
        row = _verify.CheckRow("4", "§4", "dR/dW", "jax.grad of R", 1.0, 1.0, 1.0, 1e12, "scaled <= 1e-12", False)
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


# --- The learner's path: your own functions, each checked against the step it implements ---


def _softmax(Z):
    Z = Z - Z.max(axis=-1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=-1, keepdims=True)


def learner_jacobian(z):  # step 1: diag(ŷ) − ŷŷᵀ
    p = _softmax(z)
    return np.diag(p) - np.outer(p, p)


def learner_score_gradient(z, t):  # step 2: ŷΣt − t
    return _softmax(z) * t.sum() - t


def learner_gradient(W, X, y):  # step 4: Xᵀ(Ŷ − Y)/N
    Y = np.eye(W.shape[1])[y]
    return X.T @ (_softmax(X @ W) - Y) / len(X)


def learner_weighted_gradient(params, X, y, s=None, lam=0.0):  # with a bias, weights and L2
    Z = X @ params.W + params.b
    G = s[:, None] * (_softmax(Z) - np.eye(Z.shape[1])[y]) / s.sum()
    return jsoftmax.Params(X.T @ G + lam * params.W, G.sum(axis=0))


def numpy_problem(n=16, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return 0.3 * rng.standard_normal((d, k)), rng.standard_normal((n, d)), rng.integers(0, k, n)


def test_a_learners_correct_functions_pass_their_steps():
    W, X, y = numpy_problem()
    report = jsoftmax.check_gradient(W, X, y, jacobian_fn=learner_jacobian, score_grad_fn=learner_score_gradient,
                                     grad_fn=learner_gradient)
    yours = [row for row in report.rows if row.quantity.startswith("your ")]
    assert [(row.step, row.name) for row in yours] == [
        ("1", "your jacobian_fn: ∂ŷ/∂z"), ("2", "your score_grad_fn: ∂ℓ/∂z"), ("4", "your grad_fn: dR/dW"),
        ("4", "your grad_fn: dR/dW")]
    assert report.passed, str(report)
    assert {row.against for row in yours if row.step == "4"} == {"jax.grad of R", "jsoftmax's analytic dR/dW"}


def test_a_learners_gradient_with_bias_weights_and_l2_passes():
    W, X, y = numpy_problem(seed=1)
    b = np.array([0.1, -0.2, 0.3])
    s = np.linspace(0.5, 2.0, len(y))
    report = jsoftmax.check_gradient(jsoftmax.Params(W, b), X, y, sample_weight=s, l2=0.1,
                                     grad_fn=lambda p, X, y: learner_weighted_gradient(p, X, y, s, 0.1))
    names = [row.name for row in report.rows if row.quantity.startswith("your ")]
    assert names == ["your grad_fn: dR/dW"] * 2 + ["your grad_fn: dR/db"] * 2
    assert report.passed, str(report)


def drop_the_average(W, X, y):
    return learner_gradient(W, X, y) * len(X)


def swap_yhat_and_y(z, t):
    return t - _softmax(z) * t.sum()


def forget_the_outer_product(z):
    return np.diag(_softmax(z))


@pytest.mark.parametrize(("mistake", "keyword", "step", "says"), [
    (drop_the_average, "grad_fn", "4", "the average's 1/N (step 4) is missing"),
    (swap_yhat_and_y, "score_grad_fn", "2", "ŷ and y swapped"),
    (forget_the_outer_product, "jacobian_fn", "1", "the −ŷŷᵀ term (step 1's i ≠ m case"),
])
def test_each_classic_mistake_fails_its_own_step_and_says_what_it_looks_like(mistake, keyword, step, says):
    W, X, y = numpy_problem(seed=2)
    report = jsoftmax.check_gradient(W, X, y, **{keyword: mistake})
    assert not report.passed
    assert {row.step for row in report.failed} == {step}
    assert all(row.quantity.startswith(f"your {keyword}") for row in report.failed)  # jsoftmax's own rows pass
    assert all(says in row.hint for row in report.failed), [row.hint for row in report.failed]
    text = str(report)
    assert f"FAIL step {step} " in text and says in text and "largest difference at " in text


def test_a_wrong_gradient_swapping_yhat_and_y_is_minus_one_times_the_reference():
    W, X, y = numpy_problem(seed=3)
    report = jsoftmax.check_gradient(W, X, y, grad_fn=lambda W, X, y: -learner_gradient(W, X, y))
    assert {row.step for row in report.failed} == {"4"}
    assert all("−1 × the reference" in row.hint for row in report.failed)


def test_the_report_keeps_the_arrays_and_says_where_they_differ_most():
    W, X, y = numpy_problem(seed=4)

    def one_wrong_entry(W, X, y):
        G = learner_gradient(W, X, y)
        G[3, 1] += 0.5
        return G

    report = jsoftmax.check_gradient(W, X, y, grad_fn=one_wrong_entry)
    row = report.failed[0]
    assert row.value.shape == row.reference.shape == W.shape and row.axes == ("feature", "class")
    np.testing.assert_allclose(row.value - row.reference, np.where(np.arange(15).reshape(5, 3) == 10, 0.5, 0),
                               atol=1e-12)
    top = row.largest_differences(2)
    assert top[0]["index"] == (3, 1) and top[0]["at"] == "feature 3, class 1"
    assert top[0]["difference"] == pytest.approx(0.5) and abs(top[1]["difference"]) < 1e-12
    assert "largest difference at feature 3, class 1" in str(report)
    assert "value" not in report.to_dict()["rows"][0]  # arrays stay out of the dict


def test_a_function_of_the_wrong_shape_fails_its_row_and_says_so():
    W, X, y = numpy_problem(seed=5)
    report = jsoftmax.check_gradient(W, X, y, grad_fn=lambda W, X, y: learner_gradient(W, X, y).T)
    assert {row.step for row in report.failed} == {"4"}
    assert all("transposed?" in row.hint for row in report.failed)


def test_a_non_function_is_refused_naming_the_argument():
    W, X, y = numpy_problem()
    with pytest.raises(TypeError, match="`grad_fn` must be a function"):
        jsoftmax.check_gradient(W, X, y, grad_fn="learner_gradient")


def test_numpy_float64_is_checked_in_float64_whatever_jaxs_flag():
    import jax

    assert not jax.config.jax_enable_x64  # the suite's default
    W, X, y = numpy_problem(seed=6)
    report = jsoftmax.check_gradient(W, X, y)
    assert report.problem["dtype"] == "float64"
    assert all(row.rel_error <= 1e-12 for row in report.rows if row.against != "central differences")
    assert not jax.config.jax_enable_x64  # scoped: the flag is as it was
    report32 = jsoftmax.check_gradient(W.astype(np.float32), X.astype(np.float32), y)
    assert report32.problem["dtype"] == "float32"  # float32 data stays float32


def test_labels_show_the_formula_checked_and_the_legend_defines_its_symbols(x64):
    params, X, y, s = _verify.random_problem(30, 4, 5, bias=True, ignore=True, weights=True, seed=7)
    report = jsoftmax.check_gradient(params, X, y, sample_weight=s, l2=0.1, label_smoothing=0.1)
    quantities = {row.name: row.quantity for row in report.rows if row.against != "central differences"}
    assert quantities["dR/dW"] == "dR/dW = Xᵀdiag(s)(Ŷ − T)/Σs + λW"
    assert quantities["dR/db"] == "dR/db = 1ᵀdiag(s)(Ŷ − T)/Σs"
    assert quantities["∂ℓ/∂z"] == "∂ℓ/∂z = ŷΣt − t, t = (1 − ε)y + ε/K"
    assert report.problem["ignored_rows"] == 10
    legend = report.legend()
    for symbol in ("Ŷ", "ŷ", "T = (1 − ε)Y + ε/K", "Σs", "diag(s)", "λ", "A = XV_W + 1V_bᵀ", "of tol", "scaled err"):
        assert symbol in legend, symbol


def test_cli_verify_one_problem_prints_one_table(capsys):
    code = cli.main(["verify", "--problem", "16x5x3"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("step  quantity") == 1 and "PASSED" in out and "n=16, d=5, k=3" in out
    assert "Symbols" not in out
    assert cli.main(["verify", "--problem", "16x5x3", "-v"]) == 0
    assert "Symbols (docs/derivation.md)" in capsys.readouterr().out


def test_cli_verify_checks_a_learners_function_from_a_module(capsys, tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(
        "import numpy as np\n"
        "def grad(W, X, y):\n"
        "    Z = X @ W\n"
        "    P = np.exp(Z - Z.max(1, keepdims=True)); P /= P.sum(1, keepdims=True)\n"
        "    return X.T @ (P - np.eye(W.shape[1])[y])\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # the CLI adds the folder; undone after
    assert cli.main(["verify", "--problem", "16x5x3", "--grad-fn", "mine:grad"]) == 1
    out = capsys.readouterr().out
    assert "FAIL step 4 (§4) your grad_fn: dR/dW" in out and "the average's 1/N (step 4) is missing" in out
    assert cli.main(["verify", "--problem", "16x5x3", "--grad-fn", str(tmp_path / "mine.py") + ":grad"]) == 1
    capsys.readouterr()
    assert cli.main(["verify", "--problem", "16x5x3", "--grad-fn", "mine:nothing"]) == 2
    assert "--grad-fn: 'mine' has no function 'nothing'" in capsys.readouterr().err
    assert cli.main(["verify", "--grad-fn", "mine:grad"]) == 2
    assert "give --problem NxDxK" in capsys.readouterr().err


def test_the_kkt_step_checks_a_fitted_l1_model_and_fails_an_unfitted_one(x64):
    # §14: the library's pseudo-gradient against the subdifferential written out, and the KKT
    # violation of the point against kkt_tol: met at an OWL-QN fit, not at zero.
    params, X, y, _ = _verify.random_problem(64, 10, 7, seed=3, bias=True)
    start = jsoftmax.Params(params.W * 0, params.b * 0)
    fitted = jsoftmax.fit(start, X, y, l1=0.02, l2=0.02, tol=1e-10, max_iter=10_000)
    report = jsoftmax.check_gradient(fitted.params, X, y, l1=0.02, l2=0.02, kkt_tol=1e-9)
    kkt = [row for row in report.rows if row.step == "KKT"]
    assert report.passed and len(kkt) == 3 and kkt[1].max_abs_error <= 1e-9
    assert "weights exactly 0" in kkt[1].quantity and int(kkt[1].quantity.split("(")[1].split()[0]) > 0
    assert "duality gap" in kkt[2].quantity and abs(kkt[2].max_abs_error) <= 1e-12  # the certificate (≥ 0 up to rounding)
    at_zero = jsoftmax.check_gradient(start, X, y, l1=0.02, l2=0.02, kkt_tol=1e-9)
    # away from the minimum: the KKT row fails, the gap (≥ 0 by weak duality) is large
    assert [row.passed for row in at_zero.rows if row.step == "KKT"] == [True, False, True]
    assert [row for row in at_zero.rows if row.step == "KKT"][2].max_abs_error > 1e-3
    plain = jsoftmax.check_gradient(fitted.params, X, y, l2=0.02)
    assert not any(row.step == "KKT" for row in plain.rows)


def test_the_gap_row_fails_when_weak_duality_does_not_hold(x64, monkeypatch):
    # P − D < 0 is impossible for a correct primal and a feasible dual point: the row says so
    from jsoftmax import _penalty

    params, X, y, _ = _verify.random_problem(32, 5, 3, seed=1, bias=True)
    fitted = jsoftmax.fit(jsoftmax.Params(params.W * 0, params.b * 0), X, y, l1=0.02, tol=1e-10, max_iter=5000)
    monkeypatch.setattr(_penalty, "duality_gap", lambda *args, **kwargs: -1e-6)
    report = jsoftmax.check_gradient(fitted.params, X, y, l1=0.02, kkt_tol=1e-8)
    assert not report.passed and [row.passed for row in report.rows if row.step == "KKT"] == [True, True, False]


def test_bad_kkt_options_are_refused(x64):
    params, X, y, _ = _verify.random_problem(16, 5, 3, seed=0)
    with pytest.raises(ValueError, match="`kkt_tol` checks the KKT conditions of an L1-penalised fit"):
        jsoftmax.check_gradient(params, X, y, kkt_tol=1e-6)
    with pytest.raises(ValueError, match="`l1`"):
        jsoftmax.check_gradient(params, X, y, l1=-1.0)


def test_cli_verify_kkt_fits_and_checks(capsys):
    assert cli.main(["verify", "--problem", "64x10x7", "--kkt", "1e-8"]) == 0
    out = capsys.readouterr().out
    assert "KKT §14  KKT violation" in out and "PASSED" in out
    assert cli.main(["verify", "--kkt", "1e-8"]) == 2
    assert "give --problem NxDxK" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--kkt checks an L1-penalised fit"):
        cli.main(["verify", "--problem", "16x5x3", "--kkt", "1e-8", "--options", "l2"])
