"""engine.jobs.generate: synthetic customers, deterministic per seed, shaped like a CRM table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from engine.errors import OutputError, UsageError
from engine.jobs.generate import (
    CHURN_COEF,
    CHURN_INTERCEPT,
    NULL_COLUMNS,
    STRING_COLUMN,
    TARGET,
    generate,
)

STATS_ROWS = 40_000


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """40,000 customers in 2 files: enough rows for rates of 0.5%."""
    out = tmp_path_factory.mktemp("gen") / "data"
    generate(STATS_ROWS, 2, out, seed=11)
    return ds.dataset(out, format="parquet").to_table()


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.parquet"))}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = generate(3_000, 3, tmp_path / "a", seed=5)
    b = generate(3_000, 3, tmp_path / "b", seed=5)
    assert a.rows == b.rows == 3_000 and a.files == b.files == 3
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert list(fa) == ["customers-00000.parquet", "customers-00001.parquet", "customers-00002.parquet"]
    assert fa == fb
    for name in fa:
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    generate(3_000, 1, tmp_path / "a", seed=5)
    generate(3_000, 1, tmp_path / "b", seed=6)
    ta = pq.read_table(tmp_path / "a" / "customers-00000.parquet")
    tb = pq.read_table(tmp_path / "b" / "customers-00000.parquet")
    assert ta.schema == tb.schema
    # Same ids (they depend only on the row number), different customers behind them.
    assert ta.column("customer_id").equals(tb.column("customer_id"))
    assert not ta.column("monetary_12m").equals(tb.column("monetary_12m"))
    assert not ta.column(TARGET).equals(tb.column(TARGET))


def test_rows_split_over_files_with_unique_int64_ids(tmp_path: Path) -> None:
    result = generate(1_001, 4, tmp_path / "d", seed=1)
    counts = [pq.read_metadata(p).num_rows for p in result.paths]
    assert sum(counts) == 1_001 and len(counts) == 4 and max(counts) - min(counts) <= 1
    ids = ds.dataset(tmp_path / "d", format="parquet").to_table(columns=["customer_id"]).column(0)
    assert ids.type == pa.int64() and ids.null_count == 0
    values = ids.to_numpy()
    assert np.unique(values).size == values.size == 1_001


def test_schema_has_about_twenty_mixed_numeric_features(big: pa.Table) -> None:
    schema = big.schema
    assert schema.field("customer_id").type == pa.int64()
    numeric = [f for f in schema
               if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
               and f.name not in ("customer_id", TARGET)]
    assert 18 <= len(numeric) <= 24
    ints = [f.name for f in numeric if pa.types.is_integer(f.type)]
    floats = [f.name for f in numeric if pa.types.is_floating(f.type)]
    assert len(ints) >= 5 and len(floats) >= 5
    for name in ("recency_days", "frequency_12m", "monetary_12m", "tenure_months", "age",
                 "support_tickets_12m", "email_open_rate", "web_visits_30d"):
        assert name in schema.names


def test_low_cardinality_string_column(big: pa.Table) -> None:
    col = big.column(STRING_COLUMN)
    assert pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    distinct = set(col.unique().to_pylist())
    assert 2 <= len(distinct) <= 10
    assert col.null_count == 0


def test_about_half_a_percent_nulls_in_a_few_columns(big: pa.Table) -> None:
    rates = {name: big.column(name).null_count / big.num_rows for name in big.schema.names}
    with_nulls = {n: r for n, r in rates.items() if r > 0}
    assert set(with_nulls) == set(NULL_COLUMNS)
    assert 2 <= len(with_nulls) <= 6
    for name, rate in with_nulls.items():
        assert 0.003 <= rate <= 0.008, (name, rate)
    assert rates["customer_id"] == 0 and rates[TARGET] == 0


def test_churned_is_binary_with_a_plausible_base_rate(big: pa.Table) -> None:
    y = big.column(TARGET).to_numpy()
    assert pa.types.is_integer(big.column(TARGET).type)
    assert set(np.unique(y)) == {0, 1}
    assert 0.05 < y.mean() < 0.5


def test_churned_follows_the_known_logistic_model(big: pa.Table) -> None:
    names = list(CHURN_COEF)
    frame = big.select([*names, TARGET]).to_pandas().dropna()
    X = frame[names].to_numpy(dtype=np.float64)
    y = frame[TARGET].to_numpy()
    true_logit = CHURN_INTERCEPT + X @ np.array([CHURN_COEF[n] for n in names])
    p = 1.0 / (1.0 + np.exp(-true_logit))
    # The observed churn rate matches the known model's mean probability (4 standard errors).
    se = np.sqrt((p * (1 - p)).sum()) / p.size
    assert abs(y.mean() - p.mean()) < 4 * se
    assert roc_auc_score(y, true_logit) > 0.8
    # A logistic regression fitted on the same columns finds every coefficient's sign.
    # (standardised first: it converges fast, and positive scaling keeps every sign)
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    fitted = LogisticRegression(C=1e6, max_iter=5_000).fit(Z, y)
    assert np.all(np.sign(fitted.coef_[0]) == np.sign([CHURN_COEF[n] for n in names]))


def test_refuses_bad_counts_and_a_non_empty_output(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        generate(0, 1, tmp_path / "x")
    with pytest.raises(UsageError):
        generate(3, 4, tmp_path / "x")
    generate(100, 1, tmp_path / "d", seed=1)
    with pytest.raises(OutputError, match="already holds data written by `engine generate`.*--overwrite"):
        generate(100, 1, tmp_path / "d", seed=2)
    before = pq.read_table(tmp_path / "d")
    generate(200, 2, tmp_path / "d", seed=2, overwrite=True)
    after = ds.dataset(tmp_path / "d", format="parquet").to_table()
    assert after.num_rows == 200 and not after.slice(0, 100).equals(before)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "_generated.json", "customers-00000.parquet", "customers-00001.parquet"]
    # No temporary directories are left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
