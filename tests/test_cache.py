"""The persistent compilation cache: per user, moved or disabled by JSOFTMAX_CACHE_DIR, and never
a reason for a fit to fail. Each case runs in a fresh process (the cache is set up at import)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent

FIT = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import jax, jax.numpy as jnp, jsoftmax
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
X = jnp.asarray([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]); y = jnp.asarray([0, 1, 1, 0])
result = jsoftmax.fit(jsoftmax.Params(jnp.zeros((2, 2)), jnp.zeros(2)), X, y, l2=0.1, tol=1e-5)
print(json.dumps({"folder": None if jsoftmax.compilation_cache_dir is None else str(jsoftmax.compilation_cache_dir),
                  "config": jax.config.jax_compilation_cache_dir, "misses": events.count("/jax/compilation_cache/cache_misses"),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "converged": result.converged, "programs": jsoftmax._aot.stats,
                  "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}))
"""


def _run(env_updates):
    env = {k: v for k, v in os.environ.items() if k != "JSOFTMAX_CACHE_DIR"}
    env.update(env_updates, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_instead_of_compiling(tmp_path):
    folder = tmp_path / "cache"
    first = _run({"JSOFTMAX_CACHE_DIR": str(folder)})
    second = _run({"JSOFTMAX_CACHE_DIR": str(folder)})
    assert first["folder"] == first["config"] == str(folder) and first["converged"] and second["converged"]
    assert first["misses"] >= 3 and any(folder.iterdir())  # the fit start, its loop, and more
    # All from disk: JAX's cache, or jsoftmax's own store for the solver's programs (jsoftmax._aot).
    assert second["misses"] == 0 and second["programs"]["compiled"] == second["programs"]["failed"] == 0
    assert second["hits"] + second["programs"]["loaded"] >= first["misses"]
    assert folder.stat().st_mode & 0o777 == 0o700


def test_default_folder_is_per_user_under_the_cache_home(tmp_path):
    out = _run({"XDG_CACHE_HOME": str(tmp_path)})
    assert out["folder"].startswith(str(tmp_path / "jsoftmax" / "jax-"))


def test_off_disables(tmp_path):
    for value in ("off", "0", ""):
        out = _run({"JSOFTMAX_CACHE_DIR": value, "XDG_CACHE_HOME": str(tmp_path)})
        assert out["folder"] is None and out["config"] is None and out["converged"]
    assert not (tmp_path / "jsoftmax").exists()


def test_unusable_folder_warns_once_and_fits_uncached(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = _run({"JSOFTMAX_CACHE_DIR": str(blocker / "cache")})
    assert out["folder"] is None and out["converged"]
    assert len(out["warnings"]) == 1 and "runs without a compilation cache" in out["warnings"][0]


def test_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    out = _run({"JSOFTMAX_CACHE_DIR": str(shared)})
    assert out["folder"] is None and "writable by other users" in out["warnings"][0]
    assert out["converged"]


# --- compiled programs kept on disk (jsoftmax._aot) -----------------------------------------

ESTIMATOR = """
import json, sys, warnings
warnings.simplefilter("always")
import jax, numpy as np
from sklearn.datasets import load_iris
lowerings = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: lowerings.append(event) if event.endswith("jaxpr_to_mlir_module_duration") else None)
with warnings.catch_warnings(record=True) as caught:
    import jsoftmax
    from jsoftmax import _aot
    if len(sys.argv) > 2:  # a compile option this backend refuses
        _aot.FRESH_OPTIONS = {"xla_no_such_option_for_jsoftmax": True}
    X, y = load_iris(return_X_y=True)
    model = jsoftmax.SoftmaxRegression(standardize=True, solver=sys.argv[1], tol=1e-8).fit(X, y)
    predicted = model.predict(X)
print(json.dumps({"coef": model.coef_.tolist(), "lowerings": len(lowerings), **_aot.stats,
                  "accuracy": float((predicted == y).mean()),
                  "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}))
"""


def _run_estimator(folder, solver="lbfgs", *extra):
    env = {k: v for k, v in os.environ.items() if k != "JSOFTMAX_CACHE_DIR"}
    env.update(JSOFTMAX_CACHE_DIR=str(folder), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", ESTIMATOR, solver, *extra], env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_new_process_loads_the_fit_without_tracing_or_lowering_it(tmp_path):
    # The fit's start and loop, and the predictions (iris is value-checked on the host: no program).
    first = _run_estimator(tmp_path / "cache")
    programs = sorted((tmp_path / "cache" / "programs").glob("*.bin"))
    assert first["compiled"] >= 3 and len(programs) == first["compiled"] and first["lowerings"] > 0
    second = _run_estimator(tmp_path / "cache")
    assert second["compiled"] == second["failed"] == 0 and second["loaded"] == first["compiled"]
    assert second["lowerings"] == 0  # nothing traced or lowered: the fit and prediction loaded whole
    assert second["coef"] == first["coef"] and second["accuracy"] > 0.95 and not second["warnings"]
    newton = _run_estimator(tmp_path / "cache", "newton-cg")  # other programs: other keys
    assert newton["compiled"] >= 2


def test_a_damaged_or_foreign_program_file_is_compiled_again(tmp_path):
    first = _run_estimator(tmp_path / "cache")
    programs = sorted((tmp_path / "cache" / "programs").glob("*.bin"))
    programs[0].write_bytes(b"not a program")
    programs[1].write_bytes(programs[2].read_bytes())  # a valid file stored under another key
    again = _run_estimator(tmp_path / "cache")
    assert again["compiled"] == 2 and again["loaded"] == first["compiled"] - 2
    assert again["coef"] == first["coef"] and not again["warnings"]
    assert _run_estimator(tmp_path / "cache")["compiled"] == 0  # replaced by good files


def test_a_program_folder_that_cannot_be_written_warns_once_and_fits(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    (folder / "programs").write_text("a file where the folder should be")
    out = _run_estimator(folder)
    assert out["accuracy"] > 0.95 and out["compiled"] >= 3
    assert len(out["warnings"]) == 1 and "could not keep a compiled program" in out["warnings"][0]


def test_a_program_folder_others_can_write_is_not_used(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    (folder / "programs").mkdir()
    (folder / "programs").chmod(0o777)
    out = _run_estimator(folder)
    assert out["accuracy"] > 0.95 and out["compiled"] == out["loaded"] == 0 and out["bypassed"] >= 3
    assert not any((folder / "programs").iterdir())
    assert len(out["warnings"]) == 1 and "others may write there" in out["warnings"][0]


def test_a_program_the_backend_will_not_compile_for_the_store_runs_plainly(tmp_path):
    out = _run_estimator(tmp_path / "cache", "lbfgs", "bad-option")
    assert out["accuracy"] > 0.95 and out["compiled"] == 0 and out["bypassed"] >= 3
    assert len(out["warnings"]) == 1 and "could not compile a program" in out["warnings"][0]
