"""Every command of the ``engine`` CLI through typer's CliRunner, on the CPU backend.

Shared data and model come from conftest.py (generated and trained once per session);
tests that write go to their own ``tmp_path``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import Result

from engine import __version__
from engine.backends import detect
from engine.errors import EXIT_CODES
from engine.jobs.generate import generate
from engine.models.artifact import load_model

Cli = Callable[..., Result]
NUMERIC_FEATURES = 21  # the generator's numeric columns besides customer_id and churned


def _manifest(output: Path) -> dict:
    return json.loads((output / "_manifest.json").read_text())


def _numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*\.?\d*", text)]


# -- version, help, info -------------------------------------------------------------------


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"engine {__version__}"


def test_python_dash_m_engine() -> None:
    proc = subprocess.run([sys.executable, "-m", "engine", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"engine {__version__}"


HELP_CASES = {
    (): ["generate", "train", "score", "model", "demo", "info", "--version", "Exit codes"],
    ("generate",): ["--rows", "--files", "--out", "--seed", "--overwrite"],
    ("train",): ["--input", "--target", "--output", "--k", "--features", "--id-column",
                 "--sample-rows", "--holdout", "--seed", "--backend"],
    ("score",): ["--input", "--model", "--output", "--id-column", "--keep", "--backend",
                 "--partition-rows", "--overwrite", "Exit codes"],
    ("model",): ["show", "import-sklearn"],
    ("model", "show"): ["Model directory", "--json"],
    ("model", "import-sklearn"): ["--segmenter", "--propensity", "--output", "pickle", "runs code"],
    ("demo",): ["--rows", "--workdir"],
    ("info",): ["backends"],
}


@pytest.mark.parametrize("command", list(HELP_CASES), ids=lambda c: " ".join(c) or "engine")
def test_help_of_every_command(cli: Cli, command: tuple[str, ...]) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    text = " ".join(result.stdout.split())  # rich wraps long lines
    for needle in HELP_CASES[command]:
        assert needle in text, (command, needle)


def test_score_help_lists_every_exit_code(cli: Cli) -> None:
    text = " ".join(cli("score", "--help").stdout.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {meaning.split()[0]}" in text, (code, meaning)


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_bad_stop_grace_is_exit_2_at_the_start(cli: Cli, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_STOP_GRACE_SECONDS", value)
    result = cli("info")
    assert result.exit_code == 2 and "ENGINE_STOP_GRACE_SECONDS" in result.output and repr(value) in result.output
    monkeypatch.setenv("ENGINE_STOP_GRACE_SECONDS", "0.5")
    assert cli("info").exit_code == 0


def test_info(cli: Cli) -> None:
    result = cli("info")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"engine {__version__} (Python ")
    assert re.fullmatch(r"cpu backend: available \(\d+ cores\)", lines[1])
    status = detect()
    if status.gpu_usable:
        assert lines[2] == "gpu backend: available"
    else:
        assert lines[2] == f"gpu backend: unavailable: {status.gpu_reason}"
        assert status.gpu_reason
        assert "devices: no GPU seen" in result.stdout or "devices: 0:" in result.stdout
    assert "libraries: cupy" in result.stdout


# -- generate --------------------------------------------------------------------------------


def test_generate(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = cli("generate", "--rows", 1_500, "--files", 2, "--out", out, "--seed", 3)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"generated 1,500 customers in 2 file(s) under {out}")
    files = sorted(out.glob("*.parquet"))
    assert [pq.read_metadata(f).num_rows for f in files] == [750, 750]
    # The CLI writes what the library writes for the same seed.
    generate(1_500, 2, tmp_path / "lib", seed=3)
    for f in files:
        assert pq.read_table(f).equals(pq.read_table(tmp_path / "lib" / f.name))

    again = cli("generate", "--rows", 100, "--files", 1, "--out", out)
    assert again.exit_code == 6
    assert "already holds data written by `engine generate`" in again.stderr and "--overwrite" in again.stderr
    assert sorted(out.glob("*.parquet")) == files

    replaced = cli("generate", "--rows", 100, "--files", 1, "--out", out, "--overwrite")
    assert replaced.exit_code == 0
    assert ds.dataset(out, format="parquet").count_rows() == 100

    bad = cli("generate", "--rows", 2, "--files", 3, "--out", tmp_path / "x")
    assert bad.exit_code == 2 and "--files" in bad.stderr
    assert cli("generate", "--rows", 10, "--out", tmp_path / "y").exit_code == 2  # --files is required


# -- train -----------------------------------------------------------------------------------


def test_train_default_features(cli: Cli, dataset_dir: Path, dataset_frame: pd.DataFrame,
                                tmp_path: Path) -> None:
    model = tmp_path / "model"
    result = cli("train", "--input", dataset_dir, "--target", "churned", "--output", model,
                 "--k", 3, "--holdout", 0.25, "--seed", 5, "--backend", "cpu")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "[train] reading 6,000 rows from 3 file(s)" in result.stderr  # progress is a diagnostic
    assert "[train]" not in out
    assert re.search(r"^holdout: AUC 0\.\d{4}  log loss \d\.\d{4}  accuracy@0\.5 0\.\d{4}  "
                     r"base rate 0\.\d{4}  rows 1,500$", out, re.M)
    assert "K-means inertia (all training rows): " in out
    m = load_model(model)
    # Evaluated on a 1,500-row holdout, then refitted on all 6,000 rows.
    # The string column region is a categorical feature beside the numeric ones.
    assert (f"trained on 6,000 rows (metrics from a 1,500-row holdout), {NUMERIC_FEATURES + 1} features "
            f"({NUMERIC_FEATURES} numeric, 1 categorical), k=3") in out
    assert "propensity = P(churned = 1)" in out
    assert re.search(r"^    region +categorical \(string\), 5 level\(s\) \+ other \+ missing$", out, re.M)
    assert f"holdout AUC {m.metrics['holdout']['auc']:.4f}" in out
    assert m.content_hash[:19] in out
    expected = [c for c in dataset_frame.columns
                if c not in ("customer_id", "churned", "region")]
    assert list(m.features) == expected and len(expected) == NUMERIC_FEATURES
    assert m.centroids.shape == (3, NUMERIC_FEATURES)
    assert [c.name for c in m.categoricals] == ["region"]
    assert sorted(m.categoricals[0].levels) == ["central", "east", "north", "south", "west"]
    assert m.metrics["holdout"]["rows"] == 1_500 and m.metrics["train"]["rows"] == 6_000
    assert m.metrics["evaluation"] == {"kind": "holdout", "rows": 1_500, "share": 0.25}
    assert m.params["holdout"] == 0.25 and m.params["seed"] == 5 and m.params["backend"] == "cpu"
    assert m.target == "churned" and m.id_column == "customer_id"
    assert 0.5 < m.metrics["holdout"]["auc"] <= 1.0


def test_train_explicit_features_sample_and_no_holdout(cli: Cli, dataset_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    features = "tenure_months,recency_days,email_open_rate,age"
    result = cli("train", "--input", dataset_dir, "--target", "churned", "--output", model,
                 "--features", features, "--sample-rows", 2_000, "--holdout", 0, "--k", 2,
                 "--backend", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "[train]" not in result.stdout  # --quiet: only the summary line
    # --holdout 0 on few rows: cross-validated metrics instead of a holdout.
    assert result.stdout.startswith("trained on 2,000 rows (metrics from 5-fold CV), 4 features, k=2")
    m = load_model(model)
    assert list(m.features) == features.split(",")
    assert m.feature_types == ("int32", "int32", "float", "int16")
    assert m.params["sample_rows"] == 2_000 and m.params["rows_read"] == 2_000
    assert "holdout" not in m.metrics and m.metrics["train"]["rows"] == 2_000
    assert m.metrics["evaluation"] == {"kind": "cv", "rows": 2_000, "folds": 5} and m.metrics["cv"]["rows"] == 2_000
    assert m.centroids.shape == (2, 4)


@pytest.mark.parametrize("flags, code, message", [
    (["--input", "{tmp}/nowhere"], 3, "does not exist"),
    (["--features", "age,not_a_column"], 3, "'not_a_column' is missing"),
    (["--features", "age,churned"], 2, "must not include the id or target"),
    (["--target", "recency_days"], 2, "is not 0/1"),
    (["--target", "region"], 2, "'west', 'central', 'north', 'south', 'east'; name the positive class with --positive"),
    (["--categorical", "monetary_12m"], 2, "cannot take as a feature with --categorical"),
    (["--k", "0"], 2, "--k"),
    (["--holdout", "0.95"], 2, "--holdout"),
    (["--sample-rows", "0"], 2, "--sample-rows"),
    (["--backend", "tpu"], 2, "'tpu' is not one of"),
])
def test_train_refuses_bad_input(cli: Cli, dataset_dir: Path, tmp_path: Path, flags: list[str],
                                 code: int, message: str) -> None:
    args = {"--input": str(dataset_dir), "--target": "churned", "--output": str(tmp_path / "model")}
    extra: list[str] = []
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in args:
            args[flag] = value.format(tmp=tmp_path)
        else:
            extra += [flag, value]
    result = cli("train", *[x for kv in args.items() for x in kv], *extra, "--quiet")
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert not (tmp_path / "model").exists()


@pytest.mark.skipif(detect().gpu_usable, reason="a usable GPU is present")
@pytest.mark.parametrize("command", ["train", "score"])
def test_backend_gpu_without_a_gpu_exits_7(cli: Cli, dataset_dir: Path, model_dir: Path,
                                           tmp_path: Path, command: str) -> None:
    if command == "train":
        args = ["train", "--input", dataset_dir, "--target", "churned", "--output", tmp_path / "m"]
    else:
        args = ["score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "s"]
    result = cli(*args, "--backend", "gpu")
    assert result.exit_code == 7
    assert "--backend gpu" in result.stderr
    assert detect().gpu_reason in result.stderr  # says what is missing
    assert "--backend cpu" in result.stderr       # and what to do instead
    assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists()


# -- score -----------------------------------------------------------------------------------


def _expected_scores(model_path: Path, X: np.ndarray,
                     frame: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segments, distances and propensities straight from the artifact's parameters.

    Categorical columns of ``frame`` are expanded to one-hot blocks in the model's level order.
    """
    m = load_model(model_path)
    Xs = np.where(np.isnan(X), m.segmenter.fill, X)
    Zs = (Xs - m.segmenter.mean) / m.segmenter.scale
    Xp = np.where(np.isnan(X), m.propensity.fill, X)
    Zp = (Xp - m.propensity.mean) / m.propensity.scale
    C, w = m.centroids, m.coef
    if m.categoricals:
        assert frame is not None
        blocks = []
        for cat in m.categoricals:
            values = frame[cat.name].astype(object)
            idx = [cat.levels.index(v) if v in cat.levels else (cat.missing if v is None else cat.other)
                   for v in values]
            blocks.append(np.eye(cat.n_levels)[idx])
        onehot = np.hstack(blocks)
        Zs, Zp = np.hstack([Zs, onehot]), np.hstack([Zp, onehot])
        C, w = np.hstack([C, m.cat_centroids]), np.concatenate([w, m.cat_coef])
    d2 = ((Zs[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    seg = d2.argmin(axis=1)
    logit = Zp @ w + m.intercept
    return seg, np.sqrt(d2[np.arange(len(seg)), seg]), 1.0 / (1.0 + np.exp(-logit))


def test_score(cli: Cli, score_cli: Cli, scores_of: Callable[..., pd.DataFrame], dataset_dir: Path,
               dataset_frame: pd.DataFrame, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    result = cli("score", "--input", dataset_dir, "--model", model_dir, "--output", out,
                 "--keep", "region,age", "--backend", "cpu", "--partition-rows", 1_500)
    assert result.exit_code == 0, result.output
    summary = result.stdout.strip().splitlines()[-1]
    # Each file is one 2,000-row row group: above --partition-rows, so streamed as one part.
    assert summary.startswith("scored 6,000 of 6,000 rows (0 rejected) in 3 part(s)")
    assert summary.endswith(f"on cpu -> {out}")
    # Results on stdout, diagnostics (progress, drift, report) on stderr.
    assert result.stdout.strip().splitlines() == [summary]
    assert "drift ok" in result.stderr and f"report: {out}/_report.html" in result.stderr

    # Every non-data file starts with '_', so pyarrow's discovery reads exactly the scores.
    names = sorted(p.name for p in out.iterdir())
    assert "_SUCCESS" in names and "_manifest.json" in names
    assert all(n.startswith("_") or re.fullmatch(r"part-\d{5}\.parquet", n) for n in names)
    dataset = ds.dataset(out, format="parquet")
    assert dataset.count_rows() == 6_000
    schema = dataset.schema
    assert schema.names == ["customer_id", "segment", "segment_distance", "propensity", "region", "age"]
    assert schema.field("customer_id").type == pa.int64()
    assert schema.field("segment").type == pa.int32()
    assert schema.field("segment_distance").type == pa.float32()
    assert schema.field("propensity").type == pa.float32()
    assert schema.field("age").type == pa.int16()

    scores = scores_of(out)
    frame = dataset_frame.sort_values("customer_id").reset_index(drop=True)
    assert scores["customer_id"].tolist() == frame["customer_id"].tolist()
    assert scores["region"].tolist() == frame["region"].tolist()
    pd.testing.assert_series_equal(scores["age"].astype("float64"), frame["age"].astype("float64"),
                                   check_names=False)
    m = load_model(model_dir)
    X = frame[list(m.features)].to_numpy(dtype=np.float64)
    assert [c.name for c in m.categoricals] == ["region"]  # the string column is a categorical feature
    seg, dist, prop = _expected_scores(model_dir, X, frame)
    np.testing.assert_array_equal(scores["segment"].to_numpy(), seg)
    np.testing.assert_allclose(scores["segment_distance"], dist, rtol=1e-5)
    np.testing.assert_allclose(scores["propensity"], prop, rtol=0, atol=1e-6)
    assert scores["propensity"].between(0, 1).all()

    manifest = _manifest(out)
    assert manifest["model"]["content_hash"] == m.content_hash
    assert manifest["backend"] == "cpu"
    totals = manifest["totals"]
    assert (totals["rows_in"], totals["rows_out"], totals["rows_rejected"], totals["parts"]) == (6_000, 6_000, 0, 3)
    assert totals["nulls_imputed"] == int(np.isnan(X).sum()) > 0
    assert sum(p["rows_out"] for p in manifest["partitions"]) == 6_000
    assert len(manifest["input"]["files"]) == 3
    assert manifest["output"]["keep"] == ["region", "age"]
    assert manifest["drift"]["segments"]["counts"] == np.bincount(seg, minlength=m.k).tolist()

    # An existing complete output is refused without --overwrite, and replaced with it.
    again = score_cli(dataset_dir, model_dir, out)
    assert again.exit_code == 6
    assert "--overwrite" in again.stderr
    assert _manifest(out)["run_id"] == manifest["run_id"]
    replaced = score_cli(dataset_dir, model_dir, out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert _manifest(out)["run_id"] != manifest["run_id"]
    assert ds.dataset(out, format="parquet").schema.names == [
        "customer_id", "segment", "segment_distance", "propensity"]


def test_score_with_another_id_column(score_cli: Cli, scores_of: Callable[..., pd.DataFrame],
                                      dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    table = pq.read_table(sorted(dataset_dir.glob("*.parquet"))[0]).slice(0, 700)
    table = table.rename_columns(["account" if n == "customer_id" else n for n in table.schema.names])
    pq.write_table(table, tmp_path / "accounts.parquet")
    missing = score_cli(tmp_path / "accounts.parquet", model_dir, tmp_path / "a")
    assert missing.exit_code == 3
    assert "'customer_id' is missing" in missing.stderr
    result = score_cli(tmp_path / "accounts.parquet", model_dir, tmp_path / "b", "--id-column", "account",
                       "--keep", "account")
    assert result.exit_code == 0, result.output
    scores = scores_of(tmp_path / "b", id_column="account")
    assert list(scores.columns) == ["account", "segment", "segment_distance", "propensity"]
    assert scores["account"].tolist() == sorted(table.column("account").to_pylist())


@pytest.mark.parametrize("case, code, message", [
    ("missing-model", 5, "does not exist"),
    ("missing-input", 3, "does not exist"),
    ("missing-feature", 3, "'tenure_months' is missing"),
    ("keep-output-column", 2, "--keep cannot name an output column"),
    ("keep-unknown-column", 3, "'nope' is missing"),
    ("non-engine-output", 6, "is not an engine output"),
    ("bad-config", 2, "does not exist"),
])
def test_score_refusals(score_cli: Cli, dataset_dir: Path, model_dir: Path, tmp_path: Path,
                        case: str, code: int, message: str) -> None:
    input, model, out, flags = dataset_dir, model_dir, tmp_path / "out", []
    if case == "missing-model":
        model = tmp_path / "no-model"
    elif case == "missing-input":
        input = tmp_path / "no-data"
    elif case == "missing-feature":
        input = tmp_path / "thin.parquet"
        pq.write_table(pq.read_table(sorted(dataset_dir.glob("*.parquet"))[0]).drop_columns(["tenure_months"]),
                       input)
    elif case == "keep-output-column":
        flags = ["--keep", "region,segment"]
    elif case == "keep-unknown-column":
        flags = ["--keep", "nope"]
    elif case == "non-engine-output":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    elif case == "bad-config":
        flags = ["--config", tmp_path / "missing.toml"]
    result = score_cli(input, model, out, *flags)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error (")
    if case == "non-engine-output":
        assert (out / "precious.txt").read_text() == "keep me"
    else:
        assert not out.exists()


# -- model show ------------------------------------------------------------------------------


def test_model_show(cli: Cli, model_dir: Path) -> None:
    m = load_model(model_dir)
    result = cli("model", "show", model_dir)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"format version 1, written by engine {__version__}" in out
    assert f"content hash {m.content_hash}" in out
    assert "source: engine train; id column 'customer_id'; target 'churned'" in out
    assert (f"segmenter: K-means, k=4; propensity = P(churned = 1): logistic regression, "
            f"intercept {m.intercept:.4f}") in out
    assert f"{NUMERIC_FEATURES + 1} features ({NUMERIC_FEATURES} numeric, 1 categorical); numeric and date" in out
    for j, name in enumerate(m.features):
        line = next(x for x in out.splitlines() if x.strip().startswith(name + " "))
        assert m.feature_types[j] in line and f"{m.coef[j]:+.4f}" in line
    assert f"cv: AUC {m.metrics['cv']['auc']:.4f}" in out  # 6,000 rows: cross-validated metrics
    assert ("strongest propensity drivers (change in log-odds per standard deviation; a column=level against "
            "the column's average customer):") in out
    # Drivers ranked by |coef| in standardised space, with sign; each segment described.
    strongest = int(np.argmax(np.abs(m.coef)))
    lines = out.splitlines()
    head = next(i for i, x in enumerate(lines) if x.startswith("  strongest propensity drivers (change in log-odds"))
    assert lines[head + 1].split()[:2] == [m.features[strongest], f"{m.coef[strongest]:+.4f}"]
    lg = m.params["logistic"]
    assert f"logistic regression: {lg['penalty'].upper()} penalty, C={lg['C']:.4g} (chosen by 5-fold CV" in out
    assert "metrics from 5-fold cross-validation over 6,000 rows; final model fitted on 6,000 rows" in out
    for s in range(m.k):
        assert any(x.strip().startswith(f"{s}: ") and " sd" in x for x in lines)


def test_model_show_json(cli: Cli, model_dir: Path) -> None:
    m = load_model(model_dir)
    result = cli("model", "show", model_dir, "--json")
    assert result.exit_code == 0
    meta = json.loads(result.stdout)
    assert meta["content_hash"] == m.content_hash
    assert meta["format_version"] == 1 and meta["engine_version"] == __version__
    assert [f["name"] for f in meta["features"]] == list(m.features)
    assert meta["segmenter"]["k"] == 4
    assert meta["metrics"]["cv"]["auc"] == m.metrics["cv"]["auc"]
    assert [d["feature"] for d in meta["drivers"]][0] == m.features[int(np.argmax(np.abs(m.coef)))]
    assert [s["segment"] for s in meta["segments"]] == list(range(4))
    assert meta.pop("propensity_of") == "P(churned = 1)"
    assert meta.pop("counts")["features"] == len(m.columns)
    assert meta == json.loads((model_dir / "model.json").read_text())


# -- demo ------------------------------------------------------------------------------------


def test_demo(cli: Cli, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = cli("demo", "--rows", 20_000, "--workdir", workdir)
    assert result.exit_code == 0, result.output
    out = result.stdout
    backend = "gpu" if detect().gpu_usable else "cpu"
    assert f"demo: 20,000 customers on backend {backend}" in out
    for step in ("generate", "train", "score"):
        line = next(x for x in out.splitlines() if x.strip().startswith(step + " "))
        secs, rate = _numbers(line)[:2]  # seconds are printed to 0.1s
        # Seconds are rounded to 0.1 s and the rate to a whole row/s: allow both roundings.
        assert 20_000 / (secs + 0.051) - 0.51 <= rate
        assert rate <= (20_000 / (secs - 0.051) if secs > 0.051 else np.inf) + 0.51
    # The segment table: 8 rows, sizes summing to every customer, shares to 100%.
    rows = re.findall(r"^\s+(\d+)\s+([\d,]+)\s+([\d.]+)%\s+([\d.]+|-)$", out, re.M)
    assert [int(r[0]) for r in rows] == list(range(8))
    assert sum(int(r[1].replace(",", "")) for r in rows) == 20_000
    assert sum(float(r[2]) for r in rows) == pytest.approx(100, abs=0.5)
    auc = float(re.search(r"holdout AUC (0\.\d{4})", out).group(1))
    assert auc > 0.8
    assert f"data   {workdir / 'data'}" in out and f"scores {workdir / 'scores'}" in out
    assert ds.dataset(workdir / "data", format="parquet").count_rows() == 20_000
    assert load_model(workdir / "model").metrics["holdout"]["auc"] == pytest.approx(auc, abs=5e-5)
    assert (workdir / "scores" / "_SUCCESS").is_file()
    scores = ds.dataset(workdir / "scores", format="parquet").to_table()
    assert scores.num_rows == 20_000
    counts = np.bincount(scores.column("segment").to_numpy(), minlength=8)
    assert counts.tolist() == [int(r[1].replace(",", "")) for r in rows]
    means = [float(r[3]) for r in rows if r[3] != "-"]
    prop = scores.column("propensity").to_numpy().astype(np.float64)
    seg = scores.column("segment").to_numpy()
    expected = [prop[seg == s].mean() for s in range(8) if counts[s]]
    np.testing.assert_allclose(means, expected, atol=6e-4)


def test_bad_rows_line_points_to_rejected_rows_only_when_there_are_some(
        cli: Callable[..., Result], model_dir: Path, dataset_frame: pd.DataFrame, tmp_path: Path) -> None:
    """With --on-bad-rows impute nothing is set aside, so the line names no _rejected/ (found by QA)."""
    frame = dataset_frame.copy()
    feature = load_model(model_dir).features[0]
    frame[feature] = frame[feature].astype("float64")
    frame.loc[[1, 5], feature] = np.inf
    data = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data)
    for policy, rejected in (("impute", 0), ("reject", 2)):
        out = tmp_path / policy
        result = cli("score", "--input", data, "--model", model_dir, "--output", out, "--backend", "cpu",
                     "--on-bad-rows", policy)
        assert result.exit_code == 0, result.output
        line = next(x for x in result.stderr.splitlines() if x.startswith("bad rows:"))
        assert line.startswith(f"bad rows: {rejected} rejected") and "2 infinite values" in line
        assert ("_rejected/" in line) == bool(rejected) == (out / "_rejected").is_dir()
