"""The engine's own training against scikit-learn on the same rows and the same split:
holdout AUC within 0.01 and K-means inertia within 2%.

The holdout evaluates the procedure (statistics, C and fit from the training side
only); the saved model is then refitted on every labelled row, K-means included."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.cluster import KMeans
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from engine.jobs.generate import generate
from engine.jobs.train import TrainOptions, TrainResult, split_indices, train
from engine.privacy import bounded_mean, bounded_std, clip_bounds

ROWS = 30_000
FILES = 3
K = 8
HOLDOUT = 0.2
SEED = 17


@dataclass
class Trained:
    result: TrainResult
    X: np.ndarray          # every row, in the engine's (file) order
    y: np.ndarray
    features: list[str]
    train_idx: np.ndarray
    hold_idx: np.ndarray


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("quality")
    generate(ROWS, FILES, root / "data", seed=SEED)
    # The generator's numeric columns (its string column region would be a categorical feature):
    # the comparisons below are against scikit-learn on the numeric matrix.
    result = train(TrainOptions(input=str(root / "data"), target="churned", output=str(root / "model"),
                                k=K, holdout=HOLDOUT, seed=SEED, backend="cpu",
                                features=[c for c in pq.read_schema(next((root / "data").glob("*.parquet"))).names
                                          if c not in ("customer_id", "churned", "region")]))
    features = list(result.model.features)
    # The engine reads files in sorted path order, rows in file order: do the same here.
    files = sorted((root / "data").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=[*features, "churned"]) for f in files])
    X = np.column_stack([table.column(f).to_numpy(zero_copy_only=False).astype(np.float64)
                         for f in features])
    y = table.column("churned").to_numpy().astype(np.int64)
    train_idx, hold_idx = split_indices(len(y), HOLDOUT, SEED)
    return Trained(result, X, y, features, train_idx, hold_idx)


def test_split_is_a_seeded_partition_of_the_rows() -> None:
    tr, ho = split_indices(1_000, 0.2, 5)
    assert tr.size == 800 and ho.size == 200
    assert np.array_equal(np.sort(np.concatenate([tr, ho])), np.arange(1_000))
    tr2, ho2 = split_indices(1_000, 0.2, 5)
    assert np.array_equal(tr, tr2) and np.array_equal(ho, ho2)
    assert not np.array_equal(ho, split_indices(1_000, 0.2, 6)[1])
    assert split_indices(10, 0.0, 1)[1].size == 0


def test_the_model_trains_on_what_the_options_say(trained: Trained) -> None:
    r = trained.result
    assert r.rows_read == ROWS
    assert r.rows_train == ROWS and r.rows_holdout == trained.hold_idx.size
    assert r.model.params["final_fit_rows"] == ROWS
    assert r.model.metrics["evaluation"] == {"kind": "holdout", "rows": trained.hold_idx.size, "share": HOLDOUT}
    assert r.model.k == K and r.model.params["seed"] == SEED
    assert 18 <= len(trained.features) <= 24
    assert "customer_id" not in trained.features and "churned" not in trained.features
    assert np.isnan(trained.X).any()  # the comparison really runs on data with nulls
    # The final model imputes with every labelled row's bounded means and scales by their bounded
    # spreads (engine.privacy: clipped at the 20th smallest and largest, rounded to one
    # customer's influence): close to the plain mean and SD on this well-spread data.
    Xtr = trained.X
    for j in range(Xtr.shape[1]):
        present = Xtr[:, j][np.isfinite(Xtr[:, j])]
        assert r.model.segmenter.fill[j] == bounded_mean(present)
        assert r.model.segmenter.scale[j] == (bounded_std(present) or 1.0)
        spread = np.std(present)
        assert abs(r.model.segmenter.fill[j] - present.mean()) <= 0.1 * spread + 1e-12
        assert r.model.segmenter.scale[j] == pytest.approx(spread, rel=0.35) or spread == 0


def test_holdout_auc_matches_scikit_learn_on_the_same_split(trained: Trained) -> None:
    X, y, tr, ho = trained.X, trained.y, trained.train_idx, trained.hold_idx
    pipe = Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler()),
                     ("logit", LogisticRegression(max_iter=1_000))])
    pipe.fit(X[tr], y[tr])
    p = pipe.predict_proba(X[ho])[:, 1]
    sk_auc = roc_auc_score(y[ho], p)
    hold = trained.result.model.metrics["holdout"]
    assert hold["rows"] == ho.size
    assert hold["base_rate"] == pytest.approx(y[ho].mean())
    assert abs(hold["auc"] - sk_auc) <= 0.01, (hold["auc"], sk_auc)
    assert hold["log_loss"] == pytest.approx(log_loss(y[ho], p), abs=0.01)
    assert hold["accuracy"] == pytest.approx(((p >= 0.5) == (y[ho] == 1)).mean(), abs=0.01)
    assert hold["auc"] > 0.8  # the generator's churn model is learnable


def test_kmeans_inertia_matches_scikit_learn_with_the_same_k(trained: Trained) -> None:
    Xtr = trained.X  # K-means is fitted on every labelled row
    seg = trained.result.model.segmenter
    # Standardised by the model's own (bounded) fill and scale, as scikit-learn's pipeline would
    # with those statistics.
    Z = (np.where(np.isfinite(Xtr), Xtr, seg.fill) - seg.mean) / seg.scale
    # The engine fits on columns clipped at the privacy bounds (no segment of a lone extreme
    # customer), then measures the (coarsened) centroids on the rows as they are.
    bounds = np.array([clip_bounds(Z[:, j]) for j in range(Z.shape[1])])
    fitted = KMeans(n_clusters=K, n_init=3, random_state=0).fit(np.clip(Z, bounds[:, 0], bounds[:, 1]))
    reference = ((Z[:, None, :] - fitted.cluster_centers_[None, :, :]) ** 2).sum(axis=2).min(axis=1).sum()
    metrics = trained.result.model.metrics
    engine_inertia = metrics["kmeans_inertia_train"]
    assert abs(engine_inertia - reference) <= 0.02 * reference, (engine_inertia, reference)
    assert metrics["kmeans_inertia_train_per_row"] == pytest.approx(engine_inertia / Xtr.shape[0])
    # The recorded training inertia is that of the stored centroids on these rows.
    C = trained.result.model.centroids
    d2 = ((Z[:, None, :] - C[None, :, :]) ** 2).sum(axis=2).min(axis=1)
    assert d2.sum() == pytest.approx(engine_inertia, rel=1e-6)


def test_training_metrics_are_recorded_in_the_artifact(trained: Trained, tmp_path: Path) -> None:
    from engine.models.artifact import load_model

    loaded = load_model(trained.result.path)
    assert loaded.metrics == trained.result.model.metrics
    assert set(loaded.metrics["train"]) == {"auc", "log_loss", "accuracy", "base_rate", "rows"}
    assert loaded.metrics["train"]["rows"] == ROWS


def test_a_training_set_larger_than_memory_is_refused_with_a_sample_size() -> None:
    from engine.errors import UsageError
    from engine.jobs.train import check_training_memory

    check_training_memory(1_000_000, 21, "data", available=8 * 2**30)  # ~1 GiB: fine
    with pytest.raises(UsageError) as err:
        check_training_memory(200_000_000, 21, "data/customers", available=8 * 2**30)
    message = str(err.value)
    assert "data/customers" in message and "--sample-rows" in message and "GiB" in message
    fits = int(message.split("at most about ")[1].split(" rows")[0].replace(",", ""))
    check_training_memory(fits, 21, "data", available=8 * 2**30)  # the suggested size does fit
