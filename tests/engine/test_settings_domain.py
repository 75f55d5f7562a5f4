"""Settings are checked over their whole domain at load (issue 16, finding 8): --dry-run and a
real run refuse the same values before any work, naming where the value came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from guard_helpers import engine, one_line

from engine.config import Settings, load_settings
from engine.errors import UsageError

EXIT_USAGE = UsageError.exit_code


@pytest.mark.parametrize("variable,value", [
    ("ENGINE_PSI_ALERT", "inf"), ("ENGINE_PSI_WARNING", "nan"), ("ENGINE_NULL_ALERT", "inf"),
    ("ENGINE_PSI_ALERT", "-1"), ("ENGINE_MAX_REJECTED_FRACTION", "nan"), ("ENGINE_CONNECT_TIMEOUT_S", "inf"),
    ("ENGINE_PRIVACY_MIN_CUSTOMERS", "5"), ("ENGINE_PARTITION_ROWS", "many"),
])
@pytest.mark.parametrize("dry", [True, False])
def test_a_bad_environment_value_is_refused_before_work_naming_the_variable(
        variable: str, value: str, dry: bool, dataset_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    flags = ["--dry-run"] if dry else []
    r = engine("score", "--input", dataset_dir, "--model", model_dir, "--output", tmp_path / "out", "--backend",
               "cpu", "-q", *flags, cwd=tmp_path, env={variable: value})
    assert r.exit_code == EXIT_USAGE, r.output
    assert f"environment variable {variable}" in one_line(r.stderr)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.engine").exists()


def test_a_bad_file_value_names_the_key_and_file(tmp_path: Path) -> None:
    conf = tmp_path / "engine.toml"
    conf.write_text("[drift]\npsi_alert = inf\n")
    with pytest.raises(UsageError, match=r"`psi_alert` in \[drift\] of the config file .*engine.toml"):
        load_settings(str(conf))
    conf.write_text("[privacy]\nprivacy_min_customers = 10\n")
    with pytest.raises(UsageError, match="never lowered"):
        load_settings(str(conf))
    conf.write_text("[privacy]\nprivacy_min_customers = 50\n")
    assert load_settings(str(conf)).privacy_min_customers == 50


def test_library_settings_are_checked_too() -> None:
    with pytest.raises(UsageError, match="psi_alert"):
        Settings(psi_alert=float("inf"))
