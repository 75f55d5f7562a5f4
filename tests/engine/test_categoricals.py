"""Categorical, boolean and date columns inside the model, against scikit-learn pipelines.

Pipelines are fitted with scikit-learn (ColumnTransformer of OneHotEncoder and
SimpleImputer + StandardScaler, then KMeans or LogisticRegression), imported with
``model import-sklearn`` and scored by the engine from Parquet (plain and
dictionary-encoded strings, booleans, nulls, unseen levels): the segments must be
identical and the propensity within 1e-6 of ``predict_proba``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from engine.config import load_settings
from engine.errors import ModelError, UsageError
from engine.jobs.score import ScoreOptions, score
from engine.jobs.train import TrainOptions, train
from engine.models.artifact import load_model, save_model
from engine.models.sklearn_import import import_sklearn

PLANS = np.array(["basic", "plus", "pro", "family", "student", "legacy"])
PLAN_P = [0.4, 0.25, 0.15, 0.1, 0.08, 0.02]


def customers(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(PLANS, n, p=PLAN_P).astype(object)
    plan[rng.random(n) < 0.03] = None
    active = rng.random(n) < 0.6
    a = rng.gamma(2.0, 30.0, n)
    b = rng.normal(0.0, 1.0, n)
    b[rng.random(n) < 0.05] = np.nan
    logit = -0.5 + 0.01 * a - 0.8 * active + np.where(plan == "basic", 0.9, 0.0) + 0.3 * np.nan_to_num(b)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pd.DataFrame({"customer_id": np.arange(n, dtype=np.int64), "a": a, "b": b, "plan": plan,
                         "active": active, "churned": y})


def fit_pipelines(df: pd.DataFrame, handle_unknown: str, tmp: Path, impute_plan: bool = False) -> tuple[Path, Path]:
    def ct() -> ColumnTransformer:
        ohe = OneHotEncoder(handle_unknown=handle_unknown,
                            **({"min_frequency": 200} if handle_unknown == "infrequent_if_exist" else {}))
        cat = make_pipeline(SimpleImputer(strategy="constant", fill_value="basic"), ohe) if impute_plan else ohe
        return ColumnTransformer([("cat", cat, ["plan", "active"]),
                                  ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["a", "b"])])

    X = df[["a", "b", "plan", "active"]]
    seg = Pipeline([("ct", ct()), ("km", KMeans(5, n_init=3, random_state=0))]).fit(X)
    prop = Pipeline([("ct", ct()), ("lr", LogisticRegression(max_iter=2000))]).fit(X, df["churned"])
    joblib.dump(seg, tmp / "seg.joblib")
    joblib.dump(prop, tmp / "prop.joblib")
    return tmp / "seg.joblib", tmp / "prop.joblib"


def scoring_frame(seed: int) -> pd.DataFrame:
    df = customers(3000, seed)
    plan = df["plan"].to_numpy().copy()
    plan[::97] = "brand-new-plan"  # never seen in training
    df["plan"] = plan
    return df


def write(df: pd.DataFrame, path: Path, dictionary: bool) -> Path:
    path.mkdir(parents=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    if dictionary:
        i = table.column_names.index("plan")
        table = table.set_column(i, "plan", table.column("plan").dictionary_encode())
    pq.write_table(table, path / "part.parquet")
    return path


def engine_scores(model_dir: Path, data: Path, out: Path, reasons: int = 0) -> pd.DataFrame:
    score(ScoreOptions(input=str(data), model=str(model_dir), output=str(out), backend="cpu", reasons=reasons),
          load_settings())
    return ds.dataset(out, format="parquet").to_table().to_pandas().sort_values("customer_id")


@pytest.mark.parametrize("handle_unknown,impute_plan,dictionary", [
    ("ignore", False, False), ("ignore", False, True), ("infrequent_if_exist", False, False),
    ("infrequent_if_exist", True, True), ("ignore", True, False)])
def test_imported_column_transformer_scores_like_sklearn(tmp_path: Path, handle_unknown: str, impute_plan: bool,
                                                         dictionary: bool) -> None:
    train_df = customers(4000, 1)
    seg_path, prop_path = fit_pipelines(train_df, handle_unknown, tmp_path, impute_plan)
    model = save_model(import_sklearn(str(seg_path), str(prop_path)), tmp_path / "model")
    assert [c.name for c in model.categoricals] == ["plan", "active"]
    assert model.categoricals[1].levels == ("false", "true")
    test_df = scoring_frame(2)
    got = engine_scores(tmp_path / "model", write(test_df, tmp_path / "in", dictionary), tmp_path / "out")
    X = test_df[["a", "b", "plan", "active"]]
    seg = joblib.load(seg_path).predict(X)
    prop = joblib.load(prop_path).predict_proba(X)[:, 1]
    np.testing.assert_array_equal(got["segment"].to_numpy(), seg)
    np.testing.assert_allclose(got["propensity"].to_numpy(np.float64), prop, rtol=0, atol=1e-6)


def test_import_names_a_step_it_cannot_import(tmp_path: Path) -> None:
    from sklearn.preprocessing import MinMaxScaler

    df = customers(500, 3)
    ct = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
                            ("num", make_pipeline(SimpleImputer(), MinMaxScaler()), ["a"])])
    seg = Pipeline([("ct", ct), ("km", KMeans(3, n_init=1, random_state=0))]).fit(df[["a", "plan"]])
    prop = Pipeline([("ct", ct), ("lr", LogisticRegression())]).fit(df[["a", "plan"]], df["churned"])
    joblib.dump(seg, tmp_path / "s.joblib")
    joblib.dump(prop, tmp_path / "p.joblib")
    with pytest.raises(ModelError, match="MinMaxScaler"):
        import_sklearn(str(tmp_path / "s.joblib"), str(tmp_path / "p.joblib"))
    strict = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="error"), ["plan"])])
    seg = Pipeline([("ct", strict), ("km", KMeans(3, n_init=1, random_state=0))]).fit(df[["plan"]])
    joblib.dump(seg, tmp_path / "s.joblib")
    with pytest.raises(ModelError, match="handle_unknown='error'"):
        import_sklearn(str(tmp_path / "s.joblib"), str(tmp_path / "p.joblib"))


def _train_table(tmp_path: Path, n: int = 3000) -> Path:
    df = customers(n, 7)
    rng = np.random.default_rng(7)
    df["signup"] = [dt.date(2021, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 900, n)]
    df["store"] = rng.integers(1, 6, n).astype(np.int32)
    df["churned"] = np.where(df["churned"] == 1, "Yes", "No").astype(object)
    df.loc[df.index[::50], "churned"] = None
    df["notes"] = [[1]] * n  # a list column: never a feature
    d = tmp_path / "train"
    d.mkdir()
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.set_column(table.column_names.index("plan"), "plan", table.column("plan").dictionary_encode())
    pq.write_table(table, d / "part.parquet")
    return d


def test_train_with_categoricals_dates_and_word_target(tmp_path: Path) -> None:
    data = _train_table(tmp_path)
    opts = TrainOptions(input=str(data), target="churned", output=str(tmp_path / "m"), k=3, backend="cpu",
                        report=False, C=1.0)
    with pytest.raises(UsageError, match=r"'No', 'Yes'.*--positive"):
        train(opts)
    result = train(TrainOptions(**{**opts.__dict__, "positive": "Yes", "categorical": ("store",),
                                   "as_of": "2024-01-31"}))
    m = load_model(result.path)
    assert m.features == ("a", "b", "signup") and m.date_features == ("signup",) and m.as_of == "2024-01-31"
    assert [c.name for c in m.categoricals] == ["plan", "active", "store"]
    assert set(m.categoricals[0].levels) == {"basic", "plus", "pro", "family", "student", "legacy"}
    assert m.params["rows_null_target"] == 60 and result.rows_train == 2940
    [left] = m.params["columns"]["left_out"]
    assert left["name"] == "notes" and left["reason"].startswith("type list<") and "not a feature type" in left["reason"]
    # The engine's fit is scikit-learn's one-hot + standardise + LogisticRegression(C=1) on the same rows.
    df = pq.read_table(data / "part.parquet").to_pandas()
    df = df[df["churned"].notna()]
    df["signup_days"] = (pd.Timestamp("2024-01-31") - pd.to_datetime(df["signup"])).dt.days.astype(float)
    df["plan"] = df["plan"].astype(object)
    ct = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), ["a", "b", "signup_days"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan", "active", "store"])])
    pipe = make_pipeline(ct, LogisticRegression(C=1.0, max_iter=5000)).fit(df, df["churned"] == "Yes")
    ref = pipe.predict_proba(df)[:, 1]
    scored = engine_scores(Path(result.path), data, tmp_path / "out", reasons=2)
    mine = scored.set_index("customer_id").loc[df["customer_id"], "propensity"].to_numpy(np.float64)
    np.testing.assert_allclose(mine, ref, atol=2e-3)
    assert scored["reason_1"].str.contains("=").any()  # reason codes name levels: plan=basic


def test_tampered_levels_are_refused(tmp_path: Path) -> None:
    import json

    data = _train_table(tmp_path, 1000)
    result = train(TrainOptions(input=str(data), target="churned", output=str(tmp_path / "m"), k=2, backend="cpu",
                                report=False, C=1.0, positive="Yes"))
    meta = json.loads((Path(result.path) / "model.json").read_text())
    meta["categoricals"][0]["levels"][0] = "edited"
    (Path(result.path) / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="content hash mismatch"):
        load_model(result.path)


def test_cli_lists_every_column_and_counts_null_targets(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from engine.cli import app

    data = _train_table(tmp_path, 2000)
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "--input", str(data), "--target", "churned", "--output",
                                  str(tmp_path / "m"), "--backend", "cpu", "--quiet"])
    assert refused.exit_code == 2 and "--positive" in refused.output and "'No', 'Yes'" in refused.output
    assert not (tmp_path / "m").exists()
    result = runner.invoke(app, ["train", "--input", str(data), "--target", "churned", "--output", str(tmp_path / "m"),
                                 "--backend", "cpu", "--k", "2", "--C", "1", "--positive", "Yes",
                                 "--categorical", "store", "--as-of", "2024-01-31", "--no-report"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "signup                       date (date32[day]), days before 2024-01-31" in out
    assert "plan                         categorical (dictionary<values=string" in out
    assert "store                        categorical (int32), 5 level(s) + other + missing" in out
    assert "notes                        type list<" in out
    assert "40 rows with a null target left out" in out and "6 features" in out
    shown = runner.invoke(app, ["model", "show", str(tmp_path / "m")])
    assert shown.exit_code == 0 and "active                       categorical (bool), 2 level(s)" in shown.stdout
    assert "40 row(s) with a null target were left out of training" in shown.stdout
    bad_date = runner.invoke(app, ["train", "--input", str(data), "--target", "churned", "--output",
                                   str(tmp_path / "m2"), "--positive", "Yes", "--as-of", "31/01/2024"])
    assert bad_date.exit_code == 2 and "--as-of" in bad_date.output
