"""The command line: train, predict, evaluate, demo, and checkpoints that survive SIGKILL."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jsoftmax import SoftmaxRegression, cli
from jsoftmax.io import files as storage


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_predict_evaluate(tmp_path, capsys):
    model, plot = tmp_path / "iris.npz", tmp_path / "iris.png"
    code, out, _ = run_cli(capsys, "train", "--dataset", "iris", "--out", str(model), "--plot", str(plot), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["optimality"]["converged"] and report["test"]["accuracy"] > 0.9
    assert len(report["test"]["confusion_matrix"]) == 3 and len(report["test"]["per_class"]) == 3
    assert model.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    data = tmp_path / "iris.csv"
    np.savetxt(data, np.c_[X, y], delimiter=",", header="a,b,c,d,species", comments="", fmt="%g")
    code, out, _ = run_cli(capsys, "predict", str(model), str(data), "--json")
    predictions = json.loads(out)["predictions"]
    assert code == 0 and len(predictions) == 150
    np.testing.assert_array_equal(predictions, SoftmaxRegression.load(model).predict(X))
    code, out, _ = run_cli(capsys, "predict", str(model), str(data), "--proba")
    header, *rows = out.splitlines()  # a CSV: the class names, then one row per input row
    assert code == 0 and header == "0,1,2" and len(rows) == 150
    np.testing.assert_allclose([sum(map(float, row.split(","))) for row in rows], 1.0, atol=1e-5)
    code, out, _ = run_cli(capsys, "evaluate", str(model), str(data), "--json")
    metrics = json.loads(out)
    assert code == 0 and metrics["n_samples"] == 150 and metrics["accuracy"] > 0.9
    assert np.sum(metrics["confusion_matrix"]) == 150
    code, out, _ = run_cli(capsys, "evaluate", str(model), str(data))
    assert "precision" in out and "confusion matrix" in out


def test_train_minibatch_human_output(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "train", "--dataset", "wine", "--solver", "adam", "--batch-size", "32",
                           "--epochs", "20", "--lr", "0.05")
    assert code == 0 and "Trained on dataset wine" in out and "Test:" in out


def test_train_with_an_l1_penalty(capsys):
    code, out, _ = run_cli(capsys, "train", "--dataset", "wine", "--l1-ratio", "1", "--C", "0.1", "--tol", "1e-8")
    assert code == 0 and "Optimality: KKT violation" in out and "converged=True" in out
    code, out, _ = run_cli(capsys, "train", "--dataset", "wine", "--l1-ratio", "0.5", "--json")
    payload = json.loads(out)
    assert payload["optimality"]["converged"] and payload["optimality"]["kkt_violation"] <= 1e-6
    code, _, err = run_cli(capsys, "train", "--dataset", "wine", "--l1-ratio", "2")
    assert code == 2 and "l1_ratio" in err


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", "iris", "--resume")
    assert code == 2 and "--resume needs --checkpoint DIR" in err
    code, _, err = run_cli(capsys, "train", "--dataset", "iris", "--checkpoint", str(tmp_path / "none"), "--resume")
    assert code == 2 and "no checkpoint found" in err
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "missing.npz"), "x.csv")
    assert code == 2 and "model file not found" in err
    with pytest.raises(SystemExit):  # argparse lists the choices
        cli.main(["train", "--dataset", "mnist"])
    assert "choose from" in capsys.readouterr().err
    model = tmp_path / "m.npz"
    run_cli(capsys, "train", "--dataset", "iris", "--out", str(model), "--quiet")
    other = tmp_path / "other.csv"
    other.write_text("1,2,3,4,7\n")
    code, _, err = run_cli(capsys, "evaluate", str(model), str(other))
    assert code == 2 and "labels [7] are not among the model's classes" in err
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("1,2,0\n")
    code, _, err = run_cli(capsys, "predict", str(model), str(wrong))
    assert code == 2 and "the model expects 4 feature columns (or 5 with the label column); the file has 3" in err


def test_demo_is_the_main_job(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "demo", "--out-dir", str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"]
    assert report["gradient_check"]["passed"]
    assert abs(report["jsoftmax"]["test_accuracy"] - report["scikit_learn"]["test_accuracy"]) <= 0.01
    assert report["jsoftmax"]["objective"] <= report["scikit_learn"]["objective"] * (1 + 1e-6)
    assert (tmp_path / "digits-model.npz").exists() and (tmp_path / "digits.png").exists()


def newest_step(folder):
    found = storage.list_checkpoints(folder)
    return storage.checkpoint_step(found[0]) if found else -1


def run_kill_worker(folder, mode, at=0):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).parent.parent.parent))
    return subprocess.run([sys.executable, str(Path(__file__).parent.parent / "workers" / "kill_worker.py"), str(folder),
                           mode, str(at)], env=env, capture_output=True, text=True, timeout=300)


def test_training_killed_mid_write_and_mid_epoch_resumes_exactly(tmp_path):
    # Deterministic kills: the process SIGKILLs itself halfway through writing its third
    # checkpoint, then (resumed) from the progress callback of epoch 5, before that epoch's
    # checkpoint. Every listed checkpoint must load at each point, and the resumed run must
    # end bit-identical to one that was never interrupted.
    folder = tmp_path / "ckpt"
    folder.mkdir()
    killed = run_kill_worker(folder, "mid-write", 3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert newest_step(folder) == 2 and list(folder.glob(".ckpt-*.tmp"))  # half a file, unlisted
    for path in storage.list_checkpoints(folder):
        storage.load_npz(path, kind="checkpoint")
    killed = run_kill_worker(folder, "callback", 5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert newest_step(folder) == 4
    for path in storage.list_checkpoints(folder):
        storage.load_npz(path, kind="checkpoint")
    for mode in ("resume", "straight"):
        done = run_kill_worker(folder, mode)
        assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(np.load(folder / "W-resume.npy"), np.load(folder / "W-straight.npy"))


@pytest.mark.slow
def test_killed_training_never_leaves_an_unloadable_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    base = [sys.executable, "-m", "jsoftmax", "train", "--dataset", "digits", "--solver", "adam",
            "--batch-size", "64", "--epochs", "150", "--test-size", "0", "--quiet"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    rng = random.Random(0)
    for attempt in range(3):
        argv = base + ["--checkpoint", str(folder)] + (["--resume"] if attempt else [])
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = newest_step(folder)
        deadline = time.monotonic() + 120
        while newest_step(folder) < start + 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.03))  # land anywhere, writes included
        proc.kill()
        proc.wait(timeout=30)
        assert proc.returncode != 0, "training finished before it could be killed"
        for path in storage.list_checkpoints(folder):
            storage.load_npz(path, kind="checkpoint")  # every listed file loads
    assert newest_step(folder) >= 6

    resumed, straight = tmp_path / "resumed.npz", tmp_path / "straight.npz"
    subprocess.run(base + ["--checkpoint", str(folder), "--resume", "--out", str(resumed)], env=env,
                   check=True, timeout=300)
    subprocess.run(base + ["--out", str(straight)], env=env, check=True, timeout=300)
    a, b = SoftmaxRegression.load(resumed), SoftmaxRegression.load(straight)
    np.testing.assert_array_equal(a.coef_, b.coef_)  # the interrupted run ends exactly where one run does
    assert a.n_iter_[0] == b.n_iter_[0] == 150


def test_train_predict_evaluate_on_a_libsvm_file_stay_sparse(tmp_path, capsys, monkeypatch):
    import scipy.sparse as sp
    from sklearn.datasets import dump_svmlight_file

    from jsoftmax import _sparse

    X = sp.random(300, 2_000, density=0.01, format="csr", random_state=0)
    y = np.asarray(X[:, :3].sum(axis=1)).ravel().argsort().argsort() % 3  # learnable from 3 columns
    dump_svmlight_file(X, y, str(tmp_path / "train.svm"), zero_based=False)
    # A file to predict whose largest index is below the model's width.
    dump_svmlight_file(X[:5, :100], y[:5], str(tmp_path / "few.svm"), zero_based=False)
    densified = []
    real = _sparse.as_csr
    monkeypatch.setattr(_sparse, "as_csr", lambda X, name="X": densified.append(type(X).__name__) or real(X, name))
    model_path = tmp_path / "m.npz"
    code, out, _ = run_cli(capsys, "train", str(tmp_path / "train.svm"), "--out", str(model_path), "--json")
    assert code == 0
    payload = json.loads(out)
    data = payload["data"]
    assert data["sparse"] and data["nnz"] == X.nnz and data["n_features"] == 2_000
    assert data["density"] == pytest.approx(X.nnz / (300 * 2_000))
    assert densified and all("matrix" in name or "CSR" in name for name in densified)  # sparse all the way
    assert 0 < payload["fit_seconds"] < 600
    assert SoftmaxRegression.load(model_path).n_features_in_ == 2_000
    code, out, _ = run_cli(capsys, "predict", str(model_path), str(tmp_path / "few.svm"), "--json")
    assert code == 0 and len(json.loads(out)["predictions"]) == 5 and json.loads(out)["data"]["n_features"] == 2_000
    code, out, _ = run_cli(capsys, "evaluate", str(model_path), str(tmp_path / "train.svm"), "--json")
    assert code == 0 and json.loads(out)["data"]["sparse"] and 0 <= json.loads(out)["accuracy"] <= 1



def test_the_console_script_entry_point_loads_the_command_line():
    # `make demo` runs the installed `jsoftmax` script: its entry point must name the CLI's
    # module as it is now (it once kept naming a module that had moved, and the script failed).
    import tomllib
    from importlib import import_module
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    target = pyproject["project"]["scripts"]["jsoftmax"]
    module, _, attribute = target.partition(":")
    from jsoftmax import cli

    assert getattr(import_module(module), attribute) is cli.main
