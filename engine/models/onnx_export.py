"""An engine model as one ONNX graph, for online runtimes (onnxruntime) that score one customer at a time.

The graph does what the CPU scoring kernel (``kernels/score_rows_cpu.py``) does, in the
same float64 arithmetic and the same order, so its outputs equal ``engine score``'s:

* one named input per feature column, shape ``[N]``: numeric features as ``double`` (NaN
  for a missing value; NaN and ±inf are imputed with the head's fill value, as the
  kernel does); date features as ``double`` *days since 1970-01-01* (a ``date32`` value;
  a timestamp divided by a day in its unit), turned into days before the model's as-of
  date inside the graph; categorical features as ``string`` (booleans as ``true`` /
  ``false``, integer codes in decimal, the engine's own spelling), a value the model never
  learned scoring as the ``(other)`` level and the string ``(missing)`` as a null;
* impute, then scale each head (``z = x * (1/scale) + (-mean/scale)``, rounded twice as
  the kernel rounds it);
* K-means: squared distances to every centroid summed over the numeric features, plus
  the categorical one-hot blocks' terms looked up per level (``ai.onnx.ml.LabelEncoder``
  then ``Gather``: nothing is expanded); ``segment`` is the nearest (``ArgMin``, lowest
  index on ties) as int32 and ``segment_distance`` its Euclidean distance as float32;
* the logistic head: ``z_p · w`` plus the level terms plus the intercept, its sigmoid in
  float64 cast to float32: ``propensity``.

Built with the ``onnx`` package's helper API (``pip install 'customer-scoring-engine[onnx]'``);
the engine imports ``onnx`` only here, only when exporting.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import OutputError, UsageError
from engine.models.artifact import ScoringModel
from engine.models.categorical import MISSING_LABEL, offsets
from engine.models.scorer import level_tables

#: ``producer_name`` of every graph the engine writes: the proof an existing file is ours.
PRODUCER = "customer-scoring-engine"
OPSET = 17
ML_OPSET = 2
OUTPUTS = ("segment", "segment_distance", "propensity")


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UsageError("ONNX export needs the onnx package: pip install 'customer-scoring-engine[onnx]'") from None
    return onnx


def build_graph(model: ScoringModel) -> Any:
    """The model as an ``onnx.ModelProto`` (checked with ``onnx.checker``)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []

    columns_in = set(model.columns)
    clash = sorted(columns_in & set(OUTPUTS))
    if clash:
        raise UsageError(f"the model has a feature named {clash[0]!r}, like an output of the graph; ONNX needs "
                         "distinct names: retrain with the column renamed")
    # Every name inside the graph carries a prefix no input column starts with (a feature may be
    # called "b" or "C", and ONNX names share one space).
    P = "_engine."
    while any(c.startswith(P) for c in columns_in):
        P = "_" + P

    def const(name: str, value: Any, dtype: Any = np.float64) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name=P + name))
        return P + name

    def node(op: str, inputs: list[str], output: str, domain: str = "", **attrs: Any) -> str:
        out = output if output in OUTPUTS else P + output
        nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{out}", domain=domain, **attrs))
        return out

    inputs = []
    dates = set(model.date_features)
    as_of_days = (float((_dt.date.fromisoformat(str(model.as_of)) - _dt.date(1970, 1, 1)).days)
                  if model.as_of else 0.0)
    const("axes_1", [1], np.int64)
    k = model.k
    columns = []
    if dates:
        const("as_of_days", as_of_days)
    for j, name in enumerate(model.features):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, ["N"]))
        col = name
        if name in dates:
            # The kernel's own arithmetic: float(as_of days) - days since the epoch.
            col = node("Sub", [P + "as_of_days", name], f"days_{j}")
        columns.append(node("Unsqueeze", [col, P + "axes_1"], f"col_{j}"))
    terms_d: list[str] = []
    logit_terms: list[str] = []
    if model.features:
        X = node("Concat", columns, "X", axis=1) if len(columns) > 1 else columns[0]
        const("zero", 0.0)
        finite = node("Equal", [node("Sub", [X, X], "X_minus_X"), P + "zero"], "finite")  # false for NaN, ±inf
        seg, prop = model.segmenter, model.propensity
        Xs = node("Where", [finite, X, const("fill_s", seg.fill)], "X_s")
        Zs = node("Add", [node("Mul", [Xs, const("a_s", 1.0 / seg.scale)], "Xa_s"),
                          const("d_s", -seg.mean / seg.scale)], "Z_s")
        diff = node("Sub", [node("Unsqueeze", [Zs, P + "axes_1"], "Z_s3"), const("C", model.centroids)], "diff")
        terms_d.append(node("ReduceSum", [node("Mul", [diff, diff], "diff2"), const("axes_2", [2], np.int64)],
                            "D2_num", keepdims=0))
        Xp = node("Where", [finite, X, const("fill_p", prop.fill)], "X_p")
        Zp = node("Add", [node("Mul", [Xp, const("a_p", 1.0 / prop.scale)], "Xa_p"),
                          const("d_p", -prop.mean / prop.scale)], "Z_p")
        logit_terms.append(node("ReduceSum", [node("Mul", [Zp, const("w", model.coef)], "Zw"), P + "axes_1"],
                                "logit_num", keepdims=0))
    tables = level_tables(model)
    if tables is not None:
        cat_logit, cat_dist = tables
        const("cat_logit", cat_logit)
        const("cat_dist_T", np.ascontiguousarray(cat_dist.T))  # (L, k): one row per level
        for q, (cat, base) in enumerate(zip(model.categoricals, offsets(model.categoricals))):
            inputs.append(helper.make_tensor_value_info(cat.name, TensorProto.STRING, ["N"]))
            keys = list(cat.levels)
            values = list(range(len(keys)))
            if MISSING_LABEL not in keys:
                keys.append(MISSING_LABEL)
                values.append(cat.null_index)
            local = node("LabelEncoder", [cat.name], f"level_{q}", domain="ai.onnx.ml",
                         keys_strings=keys, values_int64s=[int(v) for v in values], default_int64=int(cat.other))
            idx = node("Add", [local, const(f"offset_{q}", int(base), np.int64)], f"global_level_{q}")
            terms_d.append(node("Gather", [P + "cat_dist_T", idx], f"D2_cat_{q}", axis=0))
            logit_terms.append(node("Gather", [P + "cat_logit", idx], f"logit_cat_{q}", axis=0))

    def total(terms: list[str], name: str) -> str:
        acc = terms[0]
        for i, t in enumerate(terms[1:]):  # in the kernel's order: numeric features, then columns
            acc = node("Add", [acc, t], f"{name}_{i}")
        return acc

    D2 = total(terms_d, "D2")
    node("Cast", [node("ArgMin", [D2], "segment64", axis=1, keepdims=0, select_last_index=0)], "segment",
         to=TensorProto.INT32)
    best = node("ReduceMin", [D2], "best", axes=[1], keepdims=0)
    node("Cast", [node("Sqrt", [node("Max", [best, P + "zero_d"], "best_pos")], "distance64")], "segment_distance",
         to=TensorProto.FLOAT)
    const("zero_d", 0.0)
    logit = node("Add", [total(logit_terms, "logit"), const("b", model.intercept)], "logit")
    node("Cast", [node("Sigmoid", [logit], "propensity64")], "propensity", to=TensorProto.FLOAT)
    outputs = [helper.make_tensor_value_info("segment", TensorProto.INT32, ["N"]),
               helper.make_tensor_value_info("segment_distance", TensorProto.FLOAT, ["N"]),
               helper.make_tensor_value_info("propensity", TensorProto.FLOAT, ["N"])]
    graph = helper.make_graph(nodes, "engine_score", inputs, outputs, initializer=inits)
    proto = helper.make_model(graph, producer_name=PRODUCER, producer_version=model.engine_version,
                              opset_imports=[helper.make_opsetid("", OPSET),
                                             helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    proto.ir_version = 8  # what onnxruntime releases of the last years all read
    helper.set_model_props(proto, {
        "engine.content_hash": model.content_hash,
        "engine.id_column": model.id_column,
        "engine.k": str(k),
        "engine.as_of": str(model.as_of or ""),
        "engine.date_inputs": ",".join(model.date_features),
        "engine.heads": "segment,propensity (engine recommend's offer heads are not part of this model format)",
    })
    onnx.checker.check_model(proto, full_check=True)
    return proto


def is_engine_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX model this engine wrote (its producer name), read without running it."""
    onnx = _onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    return proto.producer_name == PRODUCER


def export_onnx(model: ScoringModel, output: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` as ONNX at ``output`` atomically (temp file, then rename).

    An existing file is replaced only with ``overwrite`` and only when it is an ONNX graph
    this engine wrote; nothing else is ever replaced (exit 6).
    """
    onnx = _onnx()
    from engine.io.uri import local_only

    local_only(os.fspath(output), "--output")
    target = Path(output)
    if target.is_symlink() or target.is_dir():
        raise OutputError(f"--output {output} is a directory or a link; name a new .onnx file")
    if target.exists():
        if not overwrite:
            raise OutputError(f"--output {output} exists; pass --overwrite to replace an ONNX model the engine "
                              "wrote, or name a new file")
        if not is_engine_onnx(target):
            raise OutputError(f"--output {output} exists and is not an ONNX model written by this engine; "
                              "it is never replaced: name a new file")
    proto = build_graph(model)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileNotFoundError:
        raise OutputError(f"--output {output}: its directory does not exist") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(proto.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    del onnx
    return target


def onnx_feeds(model: ScoringModel, table: Any) -> dict[str, np.ndarray]:
    """The graph's inputs for a pyarrow table of the model's columns (what a service would pass)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    feeds: dict[str, np.ndarray] = {}
    dates = set(model.date_features)
    for name in model.features:
        col = table.column(name)
        if name in dates:
            if pa.types.is_timestamp(col.type):
                per_day = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}
                raw = pc.cast(pc.cast(col, pa.timestamp(col.type.unit)), pa.int64())
                values = pc.fill_null(pc.cast(raw, pa.float64()), float("nan")).to_numpy()
                feeds[name] = values / per_day[col.type.unit]
            else:
                raw = pc.cast(pc.cast(col, pa.date32()), pa.int32())
                feeds[name] = pc.fill_null(pc.cast(raw, pa.float64()), float("nan")).to_numpy()
        else:
            feeds[name] = pc.fill_null(pc.cast(col, pa.float64()), float("nan")).to_numpy()
    for cat in model.categoricals:
        col = table.column(cat.name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        text = pc.fill_null(pc.cast(col, pa.string()), MISSING_LABEL)
        feeds[cat.name] = np.asarray(text.to_pylist(), dtype=object)
    return feeds
