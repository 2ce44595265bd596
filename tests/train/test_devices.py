"""The default solvers, fit_many and the estimators split over 8 forced host devices equal the
one-device fit (issue 24, §3); bad ``devices`` values are named."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
WORKER = Path(__file__).parent.parent / "workers" / "devices_worker.py"


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-W", "ignore::sklearn.exceptions.ConvergenceWarning", str(WORKER)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["fit lbfgs", "fit newton-cg", "estimator lbfgs", "estimator newton-cg"])
def test_dense_fits_on_eight_devices_equal_one_device(report, case):
    assert report["n_devices"] == 8
    difference, one_iters, many_iters = report[case]
    # Both at tol 1e-12: the same optimum to 1e-10 (the devices sum the gradient in another
    # order, so the iterates may part by rounding on the way).
    assert difference <= 1e-10, report[case]


@pytest.mark.parametrize("case", ["fit lbfgs sparse", "estimator lbfgs sparse"])
def test_sparse_fits_on_devices_equal_one_device(report, case):
    difference, one_iters, many_iters = report[case]
    assert difference <= 1e-9, report[case]  # both at tol 1e-10, summed in another order


def test_fit_many_and_the_search_on_eight_devices(report):
    difference, one_iters, many_iters = report["fit_many"]
    assert difference <= 1e-10, report["fit_many"]
    difference, one_C, many_C, scores = report["search"]
    assert one_C == many_C and scores == 0.0 and difference <= 1e-9


def test_auto_picks_lbfgs_for_sparse_x_split_over_devices(report):
    # Newton-CG does not split a sparse X over devices; "auto" then picks L-BFGS.
    assert report["auto on devices, sparse"] == {"solver": "lbfgs"}


def test_bad_devices_are_named(report):
    bad = report["bad"]
    assert bad["empty"] == "ValueError: `devices` names no device; give None, 'all', a count or a list of jax devices."
    assert bad["twice"] == "ValueError: `devices` names a device more than once."
    assert bad["too many"] == "ValueError: `devices`=9, but this process has 8 local device(s)."
    assert bad["a word"].startswith("ValueError: `devices` must be None, 'all', a positive int")
    assert bad["not devices"] == "TypeError: `devices` must hold jax devices (jax.devices()); got str."


def test_the_l1_solver_on_eight_devices_equals_one_device(report):
    difference, one_iters, many_iters, same_zeros, zeros = report["fit owlqn"]
    assert difference <= 1e-10 and same_zeros and zeros > 0, report["fit owlqn"]
