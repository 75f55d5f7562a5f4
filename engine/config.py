"""Settings: built-in defaults < a TOML file < environment variables < CLI flags.

The TOML file is, in this order: ``--config PATH``; else ``$ENGINE_CONFIG``; else the
user's default file ``$XDG_CONFIG_HOME/engine/engine.toml`` (``~/.config/engine/engine.toml``)
when it exists; else none (built-in defaults). The working directory plays no part, so a
cron job and an operator in another directory resolve the same settings.
``conf/engine.toml`` in the repository lists every key with its default; pass it (or a
copy) with ``--config``. The result is one frozen :class:`Settings` that also records
which file was read and where each value came from (``default``, ``file``, ``env`` or
``flag``): a run's manifest and ``engine score --dry-run`` show both.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "ENGINE_"


@dataclass(frozen=True)
class Settings:
    """Every tunable of a run; see conf/engine.toml for what each one does."""

    # cluster
    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    connect_timeout_s: float = 10.0
    no_worker_timeout_s: float = 60.0
    # scoring
    partition_rows: int = 1_048_576
    batch_rows: int | None = None   # None: chosen from the threads (engine.cluster.default_batch_rows)
    block_rows: int = 16_384
    gpu_block_rows: int = 4_194_304
    gpu_tasks: int = 2
    compression: str = "snappy"
    on_bad_rows: str = "reject"
    max_rejected_fraction: float = 0.01
    # GPU
    gpus: str = "all"
    rmm_pool_size: str | None = None
    # progress
    progress_interval_s: float = 5.0
    # drift levels: PSI against the training bins, and the absolute difference between
    # tonight's null share of a feature and its training null rate
    psi_warning: float = 0.10
    psi_alert: float = 0.25
    null_warning: float = 0.05
    null_alert: float = 0.20
    # categorical columns: tonight's share of values outside the model's levels (never seen
    # in training, or too rare to keep) above the training share of "other", by this much
    unseen_warning: float = 0.05
    unseen_alert: float = 0.20
    # run report: customers at or above each propensity threshold are counted
    action_thresholds: tuple[float, ...] = (0.5, 0.8)
    # privacy: the fewest customers behind any stored or shown statistic (engine.privacy)
    privacy_min_customers: int = 20
    # Not tunables: which file was read, and where each value came from.
    config_file: str | None = field(default=None, compare=False)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Checked on every construction (file, environment, flags, library callers), so a
        # bad value stops the run with exit 2 before anything exists, never inside a task.
        if isinstance(self.action_thresholds, list):  # a library caller's list: kept hashable
            object.__setattr__(self, "action_thresholds", tuple(self.action_thresholds))
        validate(self)

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with every non-None override applied (their source becomes ``flag``)."""
        given = {k: _coerce(k, v) for k, v in overrides.items() if v is not None}
        return replace(self, **given, sources={**self.sources, **dict.fromkeys(given, "flag")})

    def values(self) -> dict[str, Any]:
        """Every tunable and its value (what a run's manifest records as ``settings``)."""
        return {name: getattr(self, name) for name in TUNABLES}

    def source(self, name: str) -> str:
        """``default``, ``file``, ``env`` or ``flag``: where the value of ``name`` came from."""
        return self.sources.get(name, "default")

    def resolved(self) -> dict[str, dict[str, Any]]:
        """``{name: {"value": ..., "source": ...}}`` for every tunable."""
        return {name: {"value": getattr(self, name), "source": self.source(name)} for name in TUNABLES}


# The flag that sets each setting, where there is one, for messages.
_FLAGS = {
    "scheduler": "--scheduler", "workers": "--workers", "threads_per_worker": "--threads-per-worker",
    "connect_timeout_s": "--connect-timeout", "partition_rows": "--partition-rows",
    "on_bad_rows": "--on-bad-rows", "max_rejected_fraction": "--max-rejected-fraction", "gpus": "--gpus",
    "batch_rows": "--batch-rows", "block_rows": "--block-rows",
}
_POSITIVE_INTS = ("partition_rows", "block_rows", "gpu_block_rows", "gpu_tasks")
_OPTIONAL_POSITIVE_INTS = ("workers", "threads_per_worker", "batch_rows")
_TIMES = ("connect_timeout_s", "no_worker_timeout_s")


def _name(key: str, settings: Settings | None = None) -> str:
    """Where the value of ``key`` came from (its flag, environment variable or config-file key),
    or, when that is not known, every way a user may have set it."""
    source = settings.source(key) if settings is not None else "default"
    if source == "env":
        return f"{key} (from the environment variable {ENV_PREFIX}{key.upper()})"
    if source == "file":
        section = next((s for s, keys in _TOML_SECTIONS.items() if key in keys), "?")
        return f"{key} (from `{key}` in [{section}] of the config file {settings.config_file})"  # type: ignore[union-attr]
    if source == "flag" and key in _FLAGS:
        return f"{key} (from {_FLAGS[key]})"
    flag = f"{_FLAGS[key]}, " if key in _FLAGS else ""
    return f"{key} ({flag}{ENV_PREFIX}{key.upper()} or `{key}` in the config file)"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(settings: Settings) -> None:
    """Every setting in range, or :class:`UsageError` (exit 2) naming it and its sources."""
    for key in _POSITIVE_INTS:
        value = getattr(settings, key)
        if not _is_int(value) or value < 1:
            raise UsageError(f"setting {_name(key, settings)} must be a whole number of at least 1, got {value!r}")
    for key in _OPTIONAL_POSITIVE_INTS:
        value = getattr(settings, key)
        if value is not None and (not _is_int(value) or value < 1):
            raise UsageError(f"setting {_name(key, settings)} must be a whole number of at least 1, got {value!r}")
    for key in _TIMES:
        value = getattr(settings, key)
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise UsageError(f"setting {_name(key, settings)} must be a finite number of seconds, 0 or more, got {value!r}")
    value = settings.progress_interval_s
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"setting {_name('progress_interval_s', settings)} must be a finite number of seconds above 0, "
                         f"got {value!r}")
    value = settings.max_rejected_fraction
    if not _is_number(value) or not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise UsageError(f"setting {_name('max_rejected_fraction', settings)} must be between 0 and 1, got {value!r}")
    _check_compression(settings.compression, settings)
    # engine.jobs.partition.BAD_ROW_POLICIES, said here so a bad value from the environment or
    # the file is named as such (the flag's own enum never lets one through).
    if settings.on_bad_rows not in ("impute", "reject", "fail"):
        raise UsageError(f"setting {_name('on_bad_rows', settings)} must be one of impute, reject, fail; "
                         f"got {settings.on_bad_rows!r}")
    for low, high in (("psi_warning", "psi_alert"), ("null_warning", "null_alert"),
                      ("unseen_warning", "unseen_alert")):
        lo, hi = getattr(settings, low), getattr(settings, high)
        for key, value in ((low, lo), (high, hi)):
            if not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise UsageError(f"setting {_name(key, settings)} must be a finite number, 0 or more, got {value!r}")
        if not lo <= hi:
            raise UsageError(f"setting {_name(low, settings)} ({lo!r}) must be at most {high} ({hi!r})")
    for share in ("null_alert", "unseen_alert"):
        if getattr(settings, share) > 1.0:
            raise UsageError(f"setting {_name(share, settings)} is a share of rows: at most 1, "
                             f"got {getattr(settings, share)!r}")
    thresholds = settings.action_thresholds
    if not isinstance(thresholds, tuple) or any(not _is_number(t) or not 0.0 <= t <= 1.0 for t in thresholds):
        raise UsageError(f"setting {_name('action_thresholds', settings)} must be propensities between 0 and 1, "
                         f"got {thresholds!r}")
    _check_pool_size(settings.rmm_pool_size, settings)
    from engine.privacy import MIN_CUSTOMERS

    value = settings.privacy_min_customers
    if not _is_int(value) or value < MIN_CUSTOMERS:
        raise UsageError(f"setting {_name('privacy_min_customers', settings)} may be raised, never lowered: "
                         f"it must be a whole number of at least {MIN_CUSTOMERS}, got {value!r}")
    gpus = settings.gpus
    listed = [g.strip() for g in gpus.split(",") if g.strip()] if isinstance(gpus, str) else None
    if listed is None or (gpus.strip() not in ("", "all") and not (listed and all(g.isdigit() for g in listed))):
        raise UsageError(f"setting {_name('gpus', settings)} must be 'all' or a comma list of device numbers like 0,1; "
                         f"got {gpus!r}")


def _check_pool_size(value: Any, settings: Settings | None = None) -> None:
    """``rmm_pool_size`` as dask-cuda reads it: a share of device memory in (0, 1] or a size.

    Checked here, on every backend, so that a typo in a shared settings file fails tonight's
    CPU run too, not first on the GPU host.
    """
    if value is None:
        return
    size = 0.0
    try:
        size = float(value)
    except (TypeError, ValueError):
        from dask.utils import parse_bytes

        try:
            size = float(parse_bytes(str(value)))
        except (TypeError, ValueError):
            size = 0.0
    if not (math.isfinite(size) and size > 0):
        raise UsageError(f"setting {_name('rmm_pool_size', settings)} must be a share of GPU memory in (0, 1] or a size "
                         f"such as 24GB or 5000MB, got {value!r}")


@functools.lru_cache(maxsize=16)
def _parquet_can_write(codec: str) -> bool:
    """Whether a Parquet part can use ``codec``, checked by writing one row to memory.

    ``pyarrow.Codec.is_available`` knows the codecs but not Parquet's own names
    ("none"); the writer itself is the one authority on what a part can use.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # A column of nulls: building one from a Python list would import pandas (0.3-0.4 s).
        probe = pa.Table.from_arrays([pa.nulls(1, pa.int64())], names=["x"])
        pq.write_table(probe, pa.BufferOutputStream(), compression=codec)
    except (ValueError, TypeError, NotImplementedError, pa.ArrowException):
        return False
    return True


def _check_compression(codec: Any, settings: Settings | None = None) -> None:
    """A Parquet codec this pyarrow can write, or :class:`UsageError`."""
    import pyarrow as pa

    if not (isinstance(codec, str) and codec and _parquet_can_write(codec)):
        known = [c for c in ("snappy", "gzip", "brotli", "zstd", "lz4") if pa.Codec.is_available(c)]
        raise UsageError(f"setting {_name('compression', settings)} must be a Parquet codec this pyarrow can write "
                         f"({', '.join(['none', *known])}), got {codec!r}")


def unique_names(values: Any, flag: str) -> None:
    """Refuse a comma list that names a column twice (``--features f0,f0,f1``)."""
    seen: set[str] = set()
    twice = [v for v in values if v in seen or seen.add(v)]  # type: ignore[func-returns-value]
    if twice:
        raise UsageError(f"{flag} names {', '.join(repr(v) for v in dict.fromkeys(twice))} more than once; "
                         "name each column once")


_TOML_SECTIONS = {
    "cluster": ("scheduler", "workers", "threads_per_worker", "connect_timeout_s", "no_worker_timeout_s"),
    "score": ("partition_rows", "batch_rows", "block_rows", "compression", "on_bad_rows",
              "max_rejected_fraction"),
    "gpu": ("gpus", "rmm_pool_size", "gpu_block_rows", "gpu_tasks"),
    "progress": ("progress_interval_s",),
    "drift": ("psi_warning", "psi_alert", "null_warning", "null_alert", "unseen_warning", "unseen_alert"),
    "report": ("action_thresholds",),
    "privacy": ("privacy_min_customers",),
}
TUNABLES = tuple(name for keys in _TOML_SECTIONS.values() for name in keys)
DEFAULT_CONFIG_NAME = Path("engine") / "engine.toml"


def _coerce(name: str, value: Any, where: str | None = None) -> Any:
    """``value`` as the setting's type; ``where`` (the variable or file key it came from) for messages."""
    try:
        return _coerce_value(name, value)
    except UsageError as exc:
        if where is None:
            raise
        raise UsageError(f"{exc} (from {where})") from None


def _coerce_value(name: str, value: Any) -> Any:
    kinds = {f.name: f.type for f in fields(Settings)}
    kind = str(kinds[name])
    if kind.startswith("tuple"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UsageError(f"setting {name!r} must be a list of numbers, got {value!r}")
        try:
            return tuple(float(v) for v in items if str(v).strip())
        except (TypeError, ValueError):
            raise UsageError(f"setting {name!r} must be a list of numbers, got {value!r}") from None
    try:
        if "int" in kind and value is not None and not isinstance(value, bool):
            return int(value)
        if "float" in kind and value is not None:
            return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"setting {name!r} must be a number, got {value!r}") from None
    return value


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        # TOML is UTF-8 by definition, whatever the locale says.
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"config {path} is not valid TOML: it is not UTF-8 text (byte {exc.start}); "
                         "pass a TOML settings file (see conf/engine.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in _TOML_SECTIONS or not isinstance(table, dict):
            raise UsageError(f"config {path}: unknown section [{section}]; known: {', '.join(_TOML_SECTIONS)}")
        for key, value in table.items():
            if key not in _TOML_SECTIONS[section]:
                raise UsageError(f"config {path}: unknown key {key!r} in [{section}]")
            values[key] = _coerce(key, value, f"`{key}` in [{section}] of the config file {path}")
    return values


def _from_env() -> dict[str, Any]:
    values = {}
    for name in TUNABLES:
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw not in (None, ""):
            values[name] = _coerce(name, raw, f"the environment variable {ENV_PREFIX}{name.upper()}")
    return values


def default_config_path() -> Path:
    """The user's default settings file: ``$XDG_CONFIG_HOME/engine/engine.toml``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / DEFAULT_CONFIG_NAME


def config_path(explicit: str | None) -> Path | None:
    """The settings file a run reads: ``--config``, ``$ENGINE_CONFIG``, the default file, or none."""
    for given, where in ((explicit, "--config"), (os.environ.get(ENV_PREFIX + "CONFIG"), "$ENGINE_CONFIG")):
        if given:
            path = Path(given)
            if not path.is_file():
                what = ("is a directory, not a file" if path.is_dir()
                        else "is not a regular file" if path.exists() else "does not exist")
                raise UsageError(f"config file {path} (from {where}) {what}; "
                                 "fix the path or drop it to use the built-in defaults")
            return path.absolute()
    default = default_config_path()
    return default.absolute() if default.is_file() else None


def load_settings(config: str | None = None, **overrides: Any) -> Settings:
    """Resolve settings from defaults, the config file, the environment and ``overrides``."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = config_path(config)
    if path is not None:
        from_file = _from_toml(path)
        values.update(from_file)
        sources.update(dict.fromkeys(from_file, "file"))
    from_env = _from_env()
    values.update(from_env)
    sources.update(dict.fromkeys(from_env, "env"))
    # One construction of the merged values: a flag may correct a bad environment value.
    flags = {k: v for k, v in overrides.items() if v is not None}
    values.update(flags)
    sources.update(dict.fromkeys(flags, "flag"))
    return Settings(**values, config_file=str(path) if path else None, sources=sources)
