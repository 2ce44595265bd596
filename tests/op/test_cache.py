"""jsoftmax's store of compiled programs: per user, moved or disabled by JSOFTMAX_CACHE_DIR,
trusted only where no one else can write, keyed by everything that changes machine code, and
never a reason for a fit to fail. Importing jsoftmax changes no JAX setting. Each case runs in a
fresh process (the store's folder is resolved at import)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent

FIT = """
import json, os, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import jax, jax.numpy as jnp
    settings = {name: getattr(jax.config, name) for name in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    import jsoftmax
    unchanged = settings == {name: getattr(jax.config, name) for name in settings}
    if len(sys.argv) > 1:
        os.chdir(sys.argv[1])
    X = jnp.asarray([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]); y = jnp.asarray([0, 1, 1, 0])
    result = jsoftmax.fit(jsoftmax.Params(jnp.zeros((2, 2)), jnp.zeros(2)), X, y, l2=0.1, tol=1e-5)
folder = jsoftmax._aot._folder
print(json.dumps({"folder": None if folder is None else str(folder.path), "unchanged": unchanged,
                  "config": jax.config.jax_compilation_cache_dir, "converged": result.converged,
                  "programs": jsoftmax._aot.stats,
                  "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}))
"""


def _run(env_updates, *args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("JSOFTMAX_CACHE_DIR", "XLA_FLAGS")}
    env.update(env_updates, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", FIT, *args], env=env, capture_output=True, text=True,
                          timeout=300, check=True, cwd=cwd)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_instead_of_compiling(tmp_path):
    folder = tmp_path / "cache"
    first = _run({"JSOFTMAX_CACHE_DIR": str(folder)})
    second = _run({"JSOFTMAX_CACHE_DIR": str(folder)})
    assert first["folder"] == str(folder / "programs") and first["converged"] and second["converged"]
    assert first["programs"]["compiled"] >= 2  # the fit's start and its loop
    assert second["programs"]["compiled"] == second["programs"]["failed"] == 0
    assert second["programs"]["loaded"] == first["programs"]["compiled"]
    assert folder.stat().st_mode & 0o777 == 0o700 and (folder / "programs").stat().st_mode & 0o777 == 0o700


def test_import_changes_no_jax_setting_and_creates_nothing(tmp_path):
    code = ("import jax, jsoftmax, json; print(json.dumps([jax.config.jax_compilation_cache_dir, "
            "jax.config.jax_persistent_cache_min_compile_time_secs]))")
    env = {k: v for k, v in os.environ.items() if k != "JSOFTMAX_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    baseline = subprocess.run([sys.executable, "-c", code.replace("jax, jsoftmax", "jax")], env=env,
                              capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == json.loads(baseline.stdout)
    assert not any(tmp_path.iterdir())
    # ...and a fit leaves JAX's settings as they were (its programs go to jsoftmax's own store).
    out = _run({"XDG_CACHE_HOME": str(tmp_path)})
    assert out["unchanged"] and out["config"] is None


def test_default_folder_is_per_user_under_the_cache_home(tmp_path):
    out = _run({"XDG_CACHE_HOME": str(tmp_path)})
    assert out["folder"] == str(tmp_path / "jsoftmax" / "programs")


def test_a_relative_folder_is_resolved_once_at_import(tmp_path):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    out = _run({"JSOFTMAX_CACHE_DIR": "rel-cache"}, str(elsewhere), cwd=start)
    assert out["folder"] == str(start / "rel-cache" / "programs") and out["converged"]
    assert any((start / "rel-cache" / "programs").iterdir()) and not any(elsewhere.iterdir())


def test_off_disables(tmp_path):
    for value in ("off", "0", ""):
        out = _run({"JSOFTMAX_CACHE_DIR": value, "XDG_CACHE_HOME": str(tmp_path)})
        assert out["folder"] is None and out["config"] is None and out["converged"]
    assert not (tmp_path / "jsoftmax").exists()


def test_unusable_folder_warns_once_and_fits_without_the_store(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = _run({"JSOFTMAX_CACHE_DIR": str(blocker / "cache")})
    assert out["folder"] is None and out["converged"]
    assert len(out["warnings"]) == 1 and "does not use stored compiled programs" in out["warnings"][0]


def test_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    out = _run({"JSOFTMAX_CACHE_DIR": str(shared)})
    assert out["folder"] is None and "writable by other users" in out["warnings"][0]
    assert out["converged"]


def test_a_programs_folder_that_is_a_symlink_is_refused(tmp_path):
    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    root.mkdir(mode=0o700)
    elsewhere.mkdir(mode=0o700)
    (root / "programs").symlink_to(elsewhere)
    out = _run({"JSOFTMAX_CACHE_DIR": str(root)})
    assert out["folder"] is None and out["converged"] and not any(elsewhere.iterdir())
    assert len(out["warnings"]) == 1


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


def _run_estimator(folder, solver="lbfgs", *extra, env_updates=()):
    env = {k: v for k, v in os.environ.items() if k not in ("JSOFTMAX_CACHE_DIR", "XLA_FLAGS")}
    env.update(JSOFTMAX_CACHE_DIR=str(folder), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.update(env_updates)
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
    assert out["accuracy"] > 0.95 and out["compiled"] == 0 and out["bypassed"] >= 3
    assert len(out["warnings"]) == 1 and "does not use stored compiled programs" in out["warnings"][0]


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


def test_a_program_replaced_by_a_symlink_is_not_loaded(tmp_path):
    # A link to a file in a folder anyone may write (a program planted by someone else).
    first = _run_estimator(tmp_path / "cache")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    programs = sorted((tmp_path / "cache" / "programs").glob("*.bin"))
    planted = shared / "planted.bin"
    planted.write_bytes(programs[0].read_bytes())
    programs[0].unlink()
    programs[0].symlink_to(planted)
    again = _run_estimator(tmp_path / "cache")
    assert again["compiled"] == 1 and again["loaded"] == first["compiled"] - 1 and again["coef"] == first["coef"]
    assert not programs[0].is_symlink() and programs[0].is_file()  # replaced by its own program
    assert planted.exists()  # the link's target is left alone


@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_a_program_file_others_may_write_is_not_loaded(tmp_path, mode):
    first = _run_estimator(tmp_path / "cache")
    programs = sorted((tmp_path / "cache" / "programs").glob("*.bin"))
    programs[0].chmod(mode)
    again = _run_estimator(tmp_path / "cache")
    assert again["compiled"] == 1 and again["loaded"] == first["compiled"] - 1
    assert programs[0].stat().st_mode & 0o777 == 0o600  # rewritten privately


def test_programs_for_other_xla_flags_are_not_loaded(tmp_path):
    first = _run_estimator(tmp_path / "cache")
    capped = _run_estimator(tmp_path / "cache", env_updates={"XLA_FLAGS": "--xla_cpu_max_isa=AVX2"})
    assert capped["loaded"] == 0 and capped["compiled"] == first["compiled"]
    assert _run_estimator(tmp_path / "cache")["compiled"] == 0  # each machine keeps its own


def test_the_key_covers_what_changes_machine_code(monkeypatch):
    import jax.numpy as jnp

    from jsoftmax import _aot, _validate

    args = (jnp.ones((3, 2)),)
    base = _aot._key(_validate._nonfinite_marker, args, {})
    assert _aot._key(_validate._nonfinite_marker, args, {}) == base
    import jax

    on_host = jax.device_put(args[0], jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host"))
    assert _aot._key(_validate._nonfinite_marker, (on_host,), {}) != base  # X in host memory: another program
    changes = [("XLA_FLAGS", "--xla_cpu_max_isa=AVX2"), ("LIBTPU_INIT_ARGS", "--xla_tpu_option"),
               ("cpu_features", lambda: "flags: sse2 avx512fp16"),
               ("FRESH_OPTIONS", {"xla_dump_large_constants": False})]
    seen = {base}
    for name, value in changes:
        with monkeypatch.context() as patch:
            if name.isupper() and not callable(value) and isinstance(value, str):
                patch.setenv(name, value)
            else:
                patch.setattr(_aot, name, value)
            key = _aot._key(_validate._nonfinite_marker, args, {})
        assert key not in seen, name
        seen.add(key)
    assert _aot._key(_validate._nonfinite_marker, args, {}) == base
