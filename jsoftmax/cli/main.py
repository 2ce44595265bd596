"""The ``jsoftmax`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from functools import partial

from .metrics import classification_metrics, metrics_lines


def _parse_sizes(text: str) -> tuple[tuple[int, int, int], ...]:
    try:
        sizes = tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must look like 16x5x3,64x10x7; got {text!r}") from None
    if any(len(s) != 3 or min(s) < 1 or s[2] < 2 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"each size is NxDxK with N, D >= 1 and K >= 2; got {text!r}"
        )
    return sizes


def _parse_problem(text: str) -> tuple[int, int, int]:
    sizes = _parse_sizes(text)
    if len(sizes) != 1:
        raise argparse.ArgumentTypeError(f"--problem is one NxDxK size, e.g. 16x5x3; got {text!r}")
    return sizes[0]


def _load_function(spec: str, flag: str):
    """``module:function`` (a module importable from here or the current folder) or
    ``path/to/file.py:function``: the learner's own function, for ``jsoftmax verify``."""
    import importlib
    import importlib.util

    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise ValueError(f"{flag} must look like module:function or file.py:function; got {spec!r}.")
    if module_name.endswith(".py") or os.sep in module_name:
        if not os.path.isfile(module_name):
            raise ValueError(f"{flag}: no file {module_name!r}.")
        loader = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module_name))[0],
                                                        module_name)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:  # `jsoftmax verify` run where the learner's file lies
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"{flag}: {module_name!r} has no function {function_name!r}.")
    return function


def _cmd_verify(args: argparse.Namespace) -> int:
    from .. import _verify

    if args.problem is not None:
        return _verify_one(args)
    if any(getattr(args, flag) for flag in ("grad_fn", "jacobian_fn", "score_grad_fn")) or args.kkt is not None:
        raise ValueError("--grad-fn, --jacobian-fn, --score-grad-fn and --kkt check one problem: give --problem NxDxK.")
    options = args.options or list(_verify.OPTION_SETS)
    reports = _verify.verify_grid(
        sizes=args.sizes, dtypes=tuple(args.dtype or ("float64", "float32")), seed=args.seed,
        option_sets=tuple(options), label_kinds=tuple(args.labels or ("int", "soft")),
    )
    passed = all(r.passed for r in reports)
    summary = _verify.summarise(reports)
    if args.json:
        payload = {"passed": passed, "summary": summary}
        if args.verbose:
            payload["reports"] = [r.to_dict() for r in reports]
        print(json.dumps(payload, indent=2))
    else:
        if args.verbose:
            for report in reports:
                print(report, end="\n\n")
        print(
            f"Checked the derivation on {len(reports)} random problems "
            f"(sizes NxDxK {', '.join('x'.join(map(str, s)) for s in args.sizes)}; "
            f"option sets {', '.join(options)}; labels {', '.join(args.labels or ('int', 'soft'))}); "
            "worst error per step:"
        )
        print(_verify.format_table(summary))
        if args.verbose:
            print("\n" + _verify.LEGEND)
        failed = [r for r in reports if not r.passed]
        print(f"\n{'ALL PASSED' if passed else f'{len(failed)} PROBLEM(S) FAILED'}")
        for report in failed:
            print(report)
    return 0 if passed else 1


def _verify_one(args: argparse.Namespace) -> int:
    """``jsoftmax verify --problem NxDxK``: one seeded problem, one table (and the learner's
    own functions, each on the step it implements)."""
    from .. import _verify

    functions = {name: _load_function(getattr(args, name), "--" + name.replace("_", "-"))
                 for name in ("grad_fn", "jacobian_fn", "score_grad_fn") if getattr(args, name)}
    option_set = (args.options or ["l1" if args.kkt is not None else "plain"])[0]
    fitted = None
    if args.kkt is not None:  # check at a fitted model: the KKT conditions of its L1 penalty
        if not _verify.OPTION_SETS[option_set].get("l1"):
            raise SystemExit(f"--kkt checks an L1-penalised fit: use --options l1 (not {option_set}).")
        fitted = partial(_fit_for_verify, tol=args.kkt / 10)
    report = _verify.verify_problem(*args.problem, dtype=(args.dtype or ["float64"])[0],
                                    option_set=option_set, labels=(args.labels or ["int"])[0],
                                    seed=args.seed, bare=True, fit_with=fitted, kkt_tol=args.kkt, **functions)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
        if args.verbose:
            print("\n" + report.legend())
        print(f"\n{'PASSED' if report.passed else 'FAILED'}")
    return 0 if report.passed else 1


def _fit_for_verify(params, X, y, weights, options, *, tol: float):
    """The seeded problem fitted with its option set's penalties (OWL-QN for an L1 part), from zero."""
    import jax

    from ..train import fit

    start = jax.tree_util.tree_map(lambda a: a * 0, params)
    return fit(start, X, y, sample_weight=weights, l2=options.get("l2", 0.0), l1=options.get("l1", 0.0),
               label_smoothing=options.get("label_smoothing", 0.0), tol=tol, max_iter=10_000).params


def _emit(args: argparse.Namespace, payload: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=_jsonable))
    elif not getattr(args, "quiet", False):
        print("\n".join(lines))


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _load_training_data(args: argparse.Namespace):
    """(X, y, source, reading): the training data and how its columns were read."""
    from ..io import data as loaders

    if args.file and args.dataset:
        raise ValueError("give either FILE or --dataset, not both.")
    if args.file:
        X, y, reading = loaders.read_file(args.file, label_column=_label_column(args.label_column),
                                        labels_path=args.labels_file)
        return X, y, str(args.file), reading
    name = args.dataset or "digits"
    return (*loaders.load_dataset(name), f"dataset {name}", loaders.Reading("dataset"))


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before training, outputs that would destroy something: a path that is one of the
    data files read, ``--out`` over a file that is not a jsoftmax model, ``--plot`` over a file
    that is not a PNG, or both outputs on one path."""
    from ..io import files

    inputs = [p for p in (args.file, args.labels_file) if p]
    if args.file and not args.labels_file:
        from ..io import data as loaders

        guess = loaders.guessed_labels_path(args.file)
        inputs += [guess] if guess is not None else []
    outputs = [(flag, path) for flag, path in (("--out", args.out), ("--plot", args.plot)) if path]
    if len(outputs) == 2 and os.path.abspath(args.out) == os.path.abspath(args.plot):
        raise ValueError(f"--out and --plot name the same file {args.out}: one would overwrite the other.")
    for flag, path in outputs:
        for data in inputs:
            if os.path.abspath(path) == os.path.abspath(data) or (
                    os.path.exists(path) and os.path.exists(data) and os.path.samefile(path, data)):
                raise ValueError(f"{flag} {path} is the data file being read: it would be overwritten. "
                                 "Choose another file name.")
        if not os.path.exists(path):
            continue
        if os.path.isdir(path):
            raise ValueError(f"{flag} {path} is a directory.")
        if flag == "--out":
            try:
                files.load_npz(path, kind="model", require_checksum=False)
            except ValueError:
                raise ValueError(f"--out {path} exists and is not a jsoftmax model file: it is not "
                                 "overwritten. Choose another file name, or remove it first.") from None
        else:
            with open(path, "rb") as handle:
                if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                    raise ValueError(f"--plot {path} exists and is not a PNG image: it is not overwritten. "
                                     "Choose another file name, or remove it first.")


def _label_column(text: str | None):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


class _Progress:
    """tqdm bar fed by jsoftmax.fit's callback (epochs or iterations)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __call__(self, info: dict) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        unit, done, total = (
            ("epoch", info["epoch"], info["max_epochs"]) if "epoch" in info
            else ("iter", info["iteration"], info["max_iter"])
        )
        if self.bar is None:
            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)
        shown = {"loss": f"{info['loss']:.4g}"}
        if "val_accuracy" in info:
            shown["val_acc"] = f"{info['val_accuracy']:.3f}"
        if "grad_norm" in info:
            shown["|g|"] = f"{info['grad_norm']:.1e}"
        self.bar.set_postfix(shown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_known_labels(model, y, source) -> None:
    import numpy as np

    unknown = sorted(set(np.asarray(y).tolist()) - set(model.classes_.tolist()), key=str)
    if unknown:
        raise ValueError(f"{source}: labels {unknown[:10]} are not among the model's classes "
                         f"{model.classes_.tolist()}.")


def _cmd_train(args: argparse.Namespace) -> int:
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    from ..sklearn import SoftmaxRegression

    if not 0 <= args.test_size < 1:
        raise ValueError(f"--test-size must lie in [0, 1); got {args.test_size}.")
    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint DIR.")
    _check_outputs(args)
    X, y, source, reading = _load_training_data(args)
    if args.test_size > 0:
        _, counts = np.unique(y, return_counts=True)
        stratify = y if counts.min() >= 2 else None
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=args.test_size, random_state=args.seed, stratify=stratify)
    else:
        X_train, y_train, X_test, y_test = X, y, None, None
    minibatch = args.batch_size is not None
    model = SoftmaxRegression(
        C=args.C, l1_ratio=args.l1_ratio, solver=args.solver, learning_rate=args.lr, batch_size=args.batch_size,
        max_iter=args.epochs if minibatch else args.max_iter, tol=args.tol,
        standardize=not args.no_standardize, random_state=args.seed,
    )
    progress = _Progress(enabled=not (args.quiet or args.json))
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():  # the report below says whether and why it stopped early
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X_train, y_train, callback=progress, checkpoint_dir=args.checkpoint,
                      checkpoint_every=args.checkpoint_every, resume=args.resume)
    finally:
        progress.close()
    fit_seconds = time.perf_counter() - started
    if model.optimality_["stop_reason"] == "diverged":
        advice = ("lower --lr, or use a full-batch solver (--solver lbfgs or newton-cg)" if minibatch
                  else "scale the features (drop --no-standardize) or raise --C's penalty (a smaller --C)")
        raise ValueError(f"training diverged: the loss or its gradient became NaN or infinite after "
                         f"{int(model.n_iter_[0])} {'epochs' if minibatch else 'iterations'} (solver "
                         f"{args.solver}); {advice}. No model was saved.")
    from ..io import data as loaders

    data = loaders.describe(X)
    payload = {"source": source, "n_features": int(X.shape[1]), "data": data,
               "classes": model.classes_.tolist(), "solver": args.solver, "fit_seconds": fit_seconds,
               "optimality": model.optimality_,
               "train": classification_metrics(model, X_train, y_train)}
    stored = (f" (sparse: {data['nnz']} stored, density {data['density']:.2e}, "
              f"{data['bytes'] / 2**20:.1f} MiB)" if data["sparse"] else "")
    lines = [f"Trained on {source}: {len(y_train)} samples, {X.shape[1]} features{stored}, "
             f"{len(model.classes_)} classes, solver {args.solver}, in {fit_seconds:.2f} s.",
             ("Optimality: KKT violation {grad_norm:.2e}" if args.l1_ratio > 0 else "Optimality: gradient max-abs "
              "{grad_norm:.2e}").format(**model.optimality_)
             + " after {n_iter} iterations, converged={converged} ({stop_reason}).".format(**model.optimality_),
             f"Train accuracy {payload['train']['accuracy']:.4f}, log loss {payload['train']['log_loss']:.4f}."]
    if not model.optimality_["converged"]:
        lines.append("Not converged to --tol: raise --max-iter (or --epochs), or loosen --tol.")
    if X_test is not None:
        payload["test"] = classification_metrics(model, X_test, y_test)
        lines += metrics_lines("Test", payload["test"])
    payload["model"] = None
    if args.out:
        model.save(args.out, metadata={"reading": reading.to_dict()})
        payload["model"] = str(args.out)
        lines.append(f"Model saved to {args.out}.")
    else:
        lines.append("The model was not saved: pass --out MODEL.npz to keep it.")
    if args.plot:
        from .plot import training_plot

        shown = payload.get("test", payload["train"])
        training_plot(args.plot, model.loss_curve_, shown["confusion_matrix"], model.classes_,
                      title=f"jsoftmax on {source}", xlabel="epoch" if minibatch else "iteration")
        payload["plot"] = str(args.plot)
        lines.append(f"Plot saved to {args.plot}.")
    _emit(args, payload, lines)
    return 0


def _model_and_data(args: argparse.Namespace, require_labels: bool):
    """The saved model and the rows of the data file, read as the model's training file was."""
    from ..io import data as loaders
    from ..sklearn import SoftmaxRegression

    model = SoftmaxRegression.load(args.model)
    reading = model.file_metadata_.get("reading")
    try:
        reading = None if reading is None else loaders.Reading.from_dict(reading)
    except ValueError as err:
        raise ValueError(f"{args.model}: invalid model file: {err}") from None
    X, y = loaders.read_like(args.file, reading, model.n_features_in_,
                           label_column=_label_column(args.label_column), labels_path=args.labels_file,
                           require_labels=require_labels)
    return model, X, y


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import io

    from ..io import data as loaders

    model, X, _ = _model_and_data(args, require_labels=False)
    data = loaders.describe(X)
    classes = model.classes_.tolist()
    if args.proba:
        proba = model.predict_proba(X)
        payload = {"classes": classes, "proba": proba.tolist(), "data": data}
        # CSV with a header of class names, one row of probabilities per input row.
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(classes)
        writer.writerows([[f"{p:.6f}" for p in row] for row in proba])
        lines = text.getvalue().splitlines()
    else:
        predicted = model.predict(X).tolist()
        payload = {"predictions": predicted, "data": data}
        lines = [str(p) for p in predicted]
    _emit(args, payload, lines)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..io import data as loaders

    model, X, y = _model_and_data(args, require_labels=True)
    _check_known_labels(model, y, args.file)
    payload = classification_metrics(model, X, y)
    payload["data"] = loaders.describe(X)
    _emit(args, payload, metrics_lines(f"Evaluation of {args.model} on {args.file}", payload))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out_dir, as_json=args.json, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    from .. import _verify

    parser = argparse.ArgumentParser(
        prog="jsoftmax", description="Softmax regression in JAX with a verified analytic gradient."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    verify = sub.add_parser(
        "verify", help="check each step of the gradient derivation against jax.grad",
        description="Check each step of docs/derivation.md numerically: on one problem "
        "(--problem NxDxK, one table; with --grad-fn and friends, your own functions) or over a "
        "grid of random problems (the default: the worst error per step). Exit code 0 only if "
        "every row passes.",
    )
    verify.add_argument("--problem", type=_parse_problem, default=None, metavar="NxDxK",
                        help="check one seeded problem of this size and print its table")
    verify.add_argument("--grad-fn", dest="grad_fn", default=None, metavar="MODULE:FUNCTION",
                        help="your grad_fn(params, X, labels) -> dR/dW, checked as step 4 (with --problem)")
    verify.add_argument("--jacobian-fn", dest="jacobian_fn", default=None, metavar="MODULE:FUNCTION",
                        help="your jacobian_fn(z) -> (K, K) softmax Jacobian, checked as step 1 (with --problem)")
    verify.add_argument("--score-grad-fn", dest="score_grad_fn", default=None, metavar="MODULE:FUNCTION",
                        help="your score_grad_fn(z, t) -> dl/dz, checked as step 2 (with --problem)")
    verify.add_argument("--sizes", type=_parse_sizes, default=_verify.DEFAULT_SIZES,
                        help="comma-separated NxDxK sizes, cycled over the grid (default: %(default)s)")
    verify.add_argument("--dtype", nargs="+", choices=["float64", "float32", "bfloat16"], default=None,
                        help="grid: float64 float32 (default); --problem: the first given (default float64)")
    verify.add_argument("--options", nargs="+", choices=list(_verify.OPTION_SETS), default=None,
                        help="option sets to check (grid default: all; --problem: the first given, default plain)")
    verify.add_argument("--labels", nargs="+", choices=["int", "soft"], default=None,
                        help="label kinds (grid default: int soft; --problem: the first given, default int)")
    verify.add_argument("--kkt", type=float, default=None, metavar="TOL",
                        help="with --problem: fit it first (its option set's L1 penalty, default --options l1, "
                             "by OWL-QN) and check the fitted model's KKT conditions to TOL")
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.add_argument("--verbose", "-v", action="store_true",
                        help="the legend of every symbol and column (and, for the grid, every problem's table)")
    verify.set_defaults(func=_cmd_verify)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--label-column", default=None,
                       help="CSV label column: a name or an index (default: the last)")
        p.add_argument("--labels-file", default=None,
                       help="IDX labels file (default: guessed from the images file name)")

    def output_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or report")

    from ..io.data import DATASETS
    from ..sklearn.common import SOLVERS

    train = sub.add_parser("train", help="fit a model to a file or a bundled dataset",
                           description="Fit SoftmaxRegression with the analytic gradient.")
    train.add_argument("file", nargs="?", help="CSV/TSV, NPZ (X, y), LIBSVM or MNIST IDX file")
    train.add_argument("--dataset", choices=DATASETS, help="scikit-learn bundled dataset (default digits)")
    data_options(train)
    train.add_argument("--solver", choices=SOLVERS, default="auto")
    train.add_argument("--lr", type=float, default=0.01, help="learning rate for adam/sgd")
    train.add_argument("--batch-size", type=int, default=None, help="minibatch size (adam/sgd)")
    train.add_argument("--epochs", type=int, default=100, help="epochs with --batch-size")
    train.add_argument("--C", type=float, default=1.0, help="inverse penalty strength, as scikit-learn")
    train.add_argument("--l1-ratio", dest="l1_ratio", type=float, default=0.0,
                       help="elastic-net mixing in [0, 1] (1: L1, exact zeros; fitted by OWL-QN), as scikit-learn")
    train.add_argument("--max-iter", type=int, default=1000, help="full-batch iterations")
    train.add_argument("--tol", type=float, default=1e-6, help="gradient max-abs tolerance")
    train.add_argument("--no-standardize", action="store_true", help="do not standardise features")
    train.add_argument("--test-size", type=float, default=0.25, help="held-out fraction (0: none)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", help="save the model here (.npz)")
    train.add_argument("--checkpoint", help="folder for atomic training checkpoints")
    train.add_argument("--checkpoint-every", type=int, default=1,
                       help="checkpoint every N epochs (minibatch) or iterations (full batch)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    train.add_argument("--plot", help="save a PNG of the loss curve and confusion matrix")
    output_options(train)
    train.set_defaults(func=_cmd_train)

    predict = sub.add_parser("predict", help="predict the classes of the rows of a file")
    predict.add_argument("model")
    predict.add_argument("file")
    data_options(predict)
    predict.add_argument("--proba", action="store_true", help="print class probabilities")
    output_options(predict)
    predict.set_defaults(func=_cmd_predict)

    evaluate = sub.add_parser("evaluate", help="accuracy, log loss, per-class metrics, confusion matrix")
    evaluate.add_argument("model")
    evaluate.add_argument("file")
    data_options(evaluate)
    output_options(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    demo = sub.add_parser("demo", help="the main job: train on digits, verify, compare, save, plot")
    demo.add_argument("--out-dir", default="jsoftmax-out", help="where the model and plot go")
    output_options(demo)
    demo.set_defaults(func=_cmd_demo)
    return parser


EXTRAS = ("sklearn", "scipy", "matplotlib", "tqdm")  # what `pip install 'jsoftmax[cli]'` brings


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ImportError as err:
        if getattr(err, "name", None) and err.name.split(".")[0] in EXTRAS:
            print(f"jsoftmax: the command line needs {err.name.split('.')[0]}: pip install 'jsoftmax[cli]'",
                  file=sys.stderr)
            return 2
        raise
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        # User errors — bad values, files that are missing, unreadable, directories, read-only
        # places: one clear line, exit status 2 (as argparse does), no traceback.
        print(f"jsoftmax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
