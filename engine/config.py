"""Settings: built-in defaults < a TOML file < environment variables < CLI flags.

The TOML file is ``--config PATH``, else ``$ENGINE_CONFIG``, else ``conf/engine.toml``
in the working directory when present. ``conf/engine.toml`` in the repository lists
every key with its default. The result is one frozen :class:`Settings`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace
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
    block_rows: int = 16_384
    gpu_block_rows: int = 4_194_304
    compression: str = "snappy"
    on_bad_rows: str = "reject"
    max_rejected_fraction: float = 0.01
    # GPU
    gpus: str = "all"
    rmm_pool_size: str | None = None
    # progress
    progress_interval_s: float = 5.0

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with every non-None override applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


_TOML_SECTIONS = {
    "cluster": ("scheduler", "workers", "threads_per_worker", "connect_timeout_s", "no_worker_timeout_s"),
    "score": ("partition_rows", "block_rows", "compression", "on_bad_rows", "max_rejected_fraction"),
    "gpu": ("gpus", "rmm_pool_size", "gpu_block_rows"),
    "progress": ("progress_interval_s",),
}


def _coerce(name: str, value: Any) -> Any:
    kinds = {f.name: f.type for f in fields(Settings)}
    kind = str(kinds[name])
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
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in _TOML_SECTIONS or not isinstance(table, dict):
            raise UsageError(f"config {path}: unknown section [{section}]; known: {', '.join(_TOML_SECTIONS)}")
        for key, value in table.items():
            if key not in _TOML_SECTIONS[section]:
                raise UsageError(f"config {path}: unknown key {key!r} in [{section}]")
            values[key] = _coerce(key, value)
    return values


def _from_env() -> dict[str, Any]:
    values = {}
    for f in fields(Settings):
        raw = os.environ.get(ENV_PREFIX + f.name.upper())
        if raw not in (None, ""):
            values[f.name] = _coerce(f.name, raw)
    return values


def config_path(explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UsageError(f"config file {path} does not exist")
        return path
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return config_path(env)
    local = Path("conf/engine.toml")
    return local if local.is_file() else None


def load_settings(config: str | None = None, **overrides: Any) -> Settings:
    """Resolve settings from defaults, the config file, the environment and ``overrides``."""
    values: dict[str, Any] = {}
    path = config_path(config)
    if path is not None:
        values.update(_from_toml(path))
    values.update(_from_env())
    settings = Settings(**values).with_overrides(**overrides)
    if settings.partition_rows < 1:
        raise UsageError("partition_rows must be at least 1")
    if not 0.0 <= settings.max_rejected_fraction <= 1.0:
        raise UsageError("--max-rejected-fraction must be between 0 and 1")
    if settings.workers is not None and settings.workers < 1:
        raise UsageError("--workers must be at least 1")
    return settings
