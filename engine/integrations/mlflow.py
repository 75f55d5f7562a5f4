"""MLflow without importing mlflow: the tracking server's REST API for logging, the registry and ``models:/``.

Why not the ``mlflow`` package: the releases that install here (3.17.x) require
``pyarrow<26`` and would downgrade the engine's pyarrow; 3.18.0 does not install. The
server runs in its own environment (as in production), and the engine talks HTTP to it
(``MLFLOW_TRACKING_URI``; ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, never printed). Only the ``pyfunc`` wrapper
(:mod:`engine.integrations.mlflow_pyfunc`) runs inside mlflow, and it imports nothing of it.

The flavour: a run artifact ``model/`` holding ``MLmodel`` (flavours
``customer_scoring_engine`` with the content hash, and ``python_function`` whose loader
is the wrapper), ``engine/model.json`` + ``engine/arrays.npz`` (the engine's own files,
byte for byte) and ``engine/report.html`` (the training report). ``engine model log``
also logs the training parameters and metrics and tags the run and the model version
with ``engine.content_hash``.

Reading: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``runs:/RUN_ID/PATH`` are
accepted wherever a model path is (:func:`engine.models.artifact.load_model` hands them
here). The files are downloaded into a private temporary directory and loaded by the
ordinary loader (content hash, schema, invariants); the hash must also equal the one the
registry recorded for that version, so a file swapped in the artifact store is exit 5.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import __version__
from engine.errors import ModelError, OutputError, UsageError

FLAVOUR = "customer_scoring_engine"
ARTIFACT_PATH = "model"
DATA_DIR = "engine"
PYFUNC_LOADER = "engine.integrations.mlflow_pyfunc"
HASH_TAG = "engine.content_hash"
MODEL_FILES = ("model.json", "arrays.npz")
_TIMEOUT_S = 60.0


def is_mlflow_uri(text: object) -> bool:
    return isinstance(text, str) and text.startswith(("models:/", "runs:/"))


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").rstrip("/")
    if not uri.startswith(("http://", "https://")):
        raise UsageError("MLflow needs the tracking server's address: set MLFLOW_TRACKING_URI=http://HOST:PORT "
                         "(the engine speaks its REST API)")
    return uri


def _headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status, self.code = status, code


def _request(method: str, path: str, *, body: bytes | None = None, params: dict[str, Any] | None = None,
             content_type: str = "application/json") -> bytes:
    url = tracking_uri() + path + ("?" + urllib.parse.urlencode(params) if params else "")
    req = urllib.request.Request(url, data=body, method=method, headers=_headers() | (
        {"Content-Type": content_type} if body is not None else {}))
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            info = json.loads(text)
            raise _ApiError(exc.code, str(info.get("error_code", "")), str(info.get("message", ""))[:300]) from None
        except ValueError:
            raise _ApiError(exc.code, "", f"HTTP {exc.code} {text[:200]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _ApiError(0, "UNREACHABLE", f"cannot reach the MLflow tracking server at {tracking_uri()} "
                                          f"({getattr(exc, 'reason', exc)})") from None


def _api(method: str, endpoint: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    if method == "GET":
        data = _request("GET", f"/api/2.0/mlflow/{endpoint}", params=payload)
    else:
        data = _request(method, f"/api/2.0/mlflow/{endpoint}", body=json.dumps(payload or {}).encode())
    return json.loads(data or b"{}")


# -- artifacts ------------------------------------------------------------------------------

def _artifact_path(artifact_uri: str) -> str:
    """The server-side path of an artifact URI the tracking server proxies (``mlflow-artifacts:``)."""
    parsed = urllib.parse.urlsplit(artifact_uri)
    if parsed.scheme != "mlflow-artifacts":
        raise UsageError(f"the run's artifact location {parsed.scheme}:// is not served by the tracking server; "
                         "start it with proxied artifacts (mlflow server --serve-artifacts, the default) so that "
                         "the engine can read and write models through it")
    return parsed.path.strip("/")


def _upload(artifact_uri: str, relative: str, data: bytes) -> None:
    path = urllib.parse.quote(f"{_artifact_path(artifact_uri)}/{relative}")
    _request("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{path}", body=data,
             content_type="application/octet-stream")


def _download(artifact_uri: str, relative: str, dest: Path) -> None:
    parsed = urllib.parse.urlsplit(artifact_uri)
    if parsed.scheme in ("", "file"):
        src = Path(urllib.parse.unquote(parsed.path)) / relative
        dest.write_bytes(src.read_bytes())
        return
    path = urllib.parse.quote(f"{_artifact_path(artifact_uri)}/{relative}")
    dest.write_bytes(_request("GET", f"/api/2.0/mlflow-artifacts/artifacts/{path}"))


# -- logging --------------------------------------------------------------------------------

def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool) or value is None or isinstance(value, (str, int, float)):
        out[prefix] = value


def _metrics(metrics: dict[str, Any], params: dict[str, Any]) -> list[tuple[str, float]]:
    """Numeric training metrics, and the CV curve of the regularisation search (per C)."""
    flat: dict[str, Any] = {}
    _flatten("", metrics, flat)
    found = [(k, float(v)) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for point in (params.get("logistic") or {}).get("curve") or []:
        for name in ("log_loss", "auc"):
            if isinstance(point.get(name), (int, float)):
                found.append((f"cv.{point.get('penalty', 'l2')}.C_{point['C']:.4g}.{name}", float(point[name])))
    return [(k.replace("=", "_"), v) for k, v in found if v == v and abs(v) != float("inf")]


def _params(params: dict[str, Any]) -> list[tuple[str, str]]:
    flat: dict[str, Any] = {}
    _flatten("", {k: v for k, v in params.items() if k != "logistic"}, flat)
    _flatten("logistic", {k: v for k, v in (params.get("logistic") or {}).items() if k != "curve"}, flat)
    return [(k, str(v)[:6000]) for k, v in flat.items()]


def _mlmodel(model: Any, run_id: str) -> str:
    """``MLmodel`` as JSON (valid YAML, which is how MLflow reads it)."""
    doc = {
        "artifact_path": ARTIFACT_PATH,
        "run_id": run_id,
        "utc_time_created": time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime()),
        "flavors": {
            FLAVOUR: {"engine_version": __version__, "content_hash": model.content_hash, "data": DATA_DIR,
                      "format_version": model.format_version, "id_column": model.id_column,
                      "features": list(model.columns), "k": model.k},
            "python_function": {"loader_module": PYFUNC_LOADER, "data": DATA_DIR,
                                "python_version": platform.python_version()},
        },
    }
    return json.dumps(doc, indent=2) + "\n"


def _experiment_id(name: str | None) -> str:
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
    try:
        return str(_api("GET", "experiments/get-by-name", {"experiment_name": name})["experiment"]["experiment_id"])
    except _ApiError as exc:
        if exc.code != "RESOURCE_DOES_NOT_EXIST":
            raise
    return str(_api("POST", "experiments/create", {"name": name})["experiment_id"])


def log_model(path: str, load: Callable[[str], Any], *, registered_name: str | None = None,
              alias: str | None = None, experiment: str | None = None,
              run_name: str | None = None) -> dict[str, Any]:
    """Log the engine model at ``path`` as an MLflow run with the flavour; optionally register it (and alias it).

    Returns ``run_id``, ``model_uri`` (``runs:/RUN/model``), and with ``registered_name`` the
    ``version`` and its ``models:/`` URI. ``load`` is the engine's model loader
    (:func:`engine.models.artifact.load_model`), passed in so that the loader, which hands
    ``models:/`` URIs to this module, and this module never import each other.
    """
    from engine.io.uri import local_only

    local_only(path, "--model")
    tracking_uri()  # exit 2 before any work when no server is named
    model = load(path)  # hash and invariants checked before anything is sent
    if alias and not registered_name:
        raise UsageError("--alias names a version of a registered model: give --registered-name too")
    root = Path(path)
    try:
        exp = _experiment_id(experiment)
        run = _api("POST", "runs/create", {
            "experiment_id": exp, "start_time": int(time.time() * 1000),
            "run_name": run_name or f"engine-{model.content_hash[7:19]}",
            "tags": [{"key": HASH_TAG, "value": model.content_hash},
                     {"key": "engine.version", "value": __version__},
                     {"key": "mlflow.source.name", "value": "engine"}]})["run"]["info"]
        run_id, artifact_uri = run["run_id"], run["artifact_uri"]
        now = int(time.time() * 1000)
        metrics = [{"key": k, "value": v, "timestamp": now, "step": 0} for k, v in _metrics(model.metrics, model.params)]
        params = [{"key": k, "value": v} for k, v in _params(model.params)]
        for i in range(0, max(len(metrics), len(params), 1), 100):  # the server's batch limits
            _api("POST", "runs/log-batch", {"run_id": run_id, "metrics": metrics[i:i + 100],
                                            "params": params[i:i + 100]})
        for name in MODEL_FILES:
            _upload(artifact_uri, f"{ARTIFACT_PATH}/{DATA_DIR}/{name}", (root / name).read_bytes())
        report = root / "report.html"
        if report.is_file():
            _upload(artifact_uri, f"{ARTIFACT_PATH}/{DATA_DIR}/report.html", report.read_bytes())
            _upload(artifact_uri, "report.html", report.read_bytes())
        _upload(artifact_uri, f"{ARTIFACT_PATH}/requirements.txt",
                f"customer-scoring-engine=={__version__}\n".encode())
        _upload(artifact_uri, f"{ARTIFACT_PATH}/MLmodel", _mlmodel(model, run_id).encode())
        _api("POST", "runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})
        result: dict[str, Any] = {"run_id": run_id, "experiment_id": exp, "model_uri": f"runs:/{run_id}/{ARTIFACT_PATH}",
                                  "content_hash": model.content_hash}
        if registered_name:
            try:
                _api("POST", "registered-models/create", {"name": registered_name})
            except _ApiError as exc:
                if exc.code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = _api("POST", "model-versions/create", {
                "name": registered_name, "source": f"{artifact_uri}/{ARTIFACT_PATH}", "run_id": run_id,
                "tags": [{"key": HASH_TAG, "value": model.content_hash}]})["model_version"]["version"]
            result |= {"registered_name": registered_name, "version": str(version),
                       "version_uri": f"models:/{registered_name}/{version}"}
            if alias:
                _api("POST", "registered-models/alias", {"name": registered_name, "alias": alias,
                                                         "version": str(version)})
                result["alias_uri"] = f"models:/{registered_name}@{alias}"
    except _ApiError as exc:
        raise OutputError(f"logging the model to MLflow failed: {exc}") from None
    return result


# -- reading --------------------------------------------------------------------------------

def _resolve(uri: str) -> tuple[str, str | None, str]:
    """``(artifact URI of the model directory, the hash the registry recorded or None, what to show)``."""
    if uri.startswith("runs:/"):
        rest = uri[len("runs:/"):].strip("/")
        run_id, _, sub = rest.partition("/")
        if not run_id:
            raise UsageError(f"--model {uri}: give runs:/RUN_ID/PATH (PATH is usually {ARTIFACT_PATH})")
        info = _api("GET", "runs/get", {"run_id": run_id})["run"]
        tags = {t["key"]: t["value"] for t in info.get("data", {}).get("tags", [])}
        base = info["info"]["artifact_uri"]
        return (f"{base}/{sub}" if sub else base), tags.get(HASH_TAG), uri
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        mv = _api("GET", "registered-models/alias", {"name": name, "alias": alias})["model_version"]
    else:
        name, _, version = rest.rpartition("/")
        if not name or not version.isdigit():
            raise UsageError(f"--model {uri}: give models:/NAME/VERSION or models:/NAME@ALIAS")
        mv = _api("GET", "model-versions/get", {"name": name, "version": version})["model_version"]
    tags = {t["key"]: t["value"] for t in mv.get("tags", [])}
    where = _api("GET", "model-versions/get-download-uri", {"name": name, "version": str(mv["version"])})
    return where["artifact_uri"], tags.get(HASH_TAG), f"{uri} (version {mv['version']})"


def load_from_mlflow(uri: str, load_model: Callable[[str], Any]) -> Any:
    """Download an engine model from MLflow and load it with ``load_model`` (every check of a local
    model); exit 5 otherwise."""
    try:
        artifact_uri, recorded, shown = _resolve(uri)
    except _ApiError as exc:
        if exc.code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or exc.status == 404:
            raise ModelError(f"model {uri} does not exist in the MLflow registry at {tracking_uri()} ({exc})") from None
        raise ModelError(f"model {uri}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="engine-mlflow-") as tmp:
        try:
            mlmodel_path = Path(tmp) / "MLmodel"
            _download(artifact_uri, "MLmodel", mlmodel_path)
            try:
                import yaml  # MLflow's own MLmodel files are YAML; ours are JSON, which YAML reads too

                mlmodel = yaml.safe_load(mlmodel_path.read_text())
            except ImportError:
                mlmodel = json.loads(mlmodel_path.read_text())
            flavour = (mlmodel or {}).get("flavors", {}).get(FLAVOUR)
            if not isinstance(flavour, dict):
                raise ModelError(f"{shown} is an MLflow model without the {FLAVOUR} flavour; log engine models "
                                 "with `engine model log`")
            data = str(flavour.get("data", DATA_DIR)).strip("/")
            if "/" in data or data in ("", ".", ".."):
                raise ModelError(f"{shown}: its MLmodel names an unexpected data directory {data!r}")
            model_dir = Path(tmp) / "model"
            model_dir.mkdir()
            for name in MODEL_FILES:
                _download(artifact_uri, f"{data}/{name}", model_dir / name)
        except _ApiError as exc:
            raise ModelError(f"{shown}: downloading the model failed ({exc}); the registry entry is incomplete") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{shown}: the MLmodel file cannot be read ({exc})") from None
        try:
            model = load_model(str(model_dir))
        except ModelError as exc:
            raise ModelError(str(exc).replace(str(model_dir), shown)) from None
    for what, expected in (("the registry", recorded), ("its MLmodel", flavour.get("content_hash"))):
        if expected is not None and expected != model.content_hash:
            raise ModelError(f"{shown}: content hash {model.content_hash} differs from the one {what} recorded "
                             f"({expected}); the files were replaced after logging: log the model again")
    return model
