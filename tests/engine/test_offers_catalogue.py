"""The offer catalogue and its rule language: errors name the line and key (exit 2); rules evaluate like SQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from engine.errors import UsageError
from engine.offers import expr
from engine.offers.catalogue import check_columns, load_catalogue

GOOD = """top = 3
[[offer]]
id = "car_insurance"
target = "owns_car_insurance"
value = 120.0
cost = 4.0
eligible = "age >= 18 and region in ['north', 'east'] and not (income is null)"
exclude_owned = true
budget = 5000

[[offer]]
id = "savings"
target = "owns_savings"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "offers.toml"
    path.write_text(text)
    return path


def test_good_catalogue_loads_with_defaults(tmp_path: Path) -> None:
    cat = load_catalogue(_write(tmp_path, GOOD))
    assert cat.top == 3 and cat.ids == ("car_insurance", "savings")
    first, second = cat.offers
    assert (first.value, first.cost, first.budget, first.exclude_owned) == (120.0, 4.0, 5000, True)
    assert (second.value, second.cost, second.budget, second.eligible) == (1.0, 0.0, None, None)
    assert cat.rule_columns() == ["age", "region", "income"]


@pytest.mark.parametrize(("edit", "line", "words"), [
    (lambda t: t.replace("value = 120.0", "valeu = 120.0"), 5, ["'valeu'", "did you mean 'value'"]),
    (lambda t: t.replace('id = "savings"', 'id = "car_insurance"'), 12, ["duplicate offer id", "line 3"]),
    (lambda t: t.replace("budget = 5000", "budget = -1"), 9, ["'budget'", "0 or more"]),
    (lambda t: t.replace("age >= 18 and", "age >= and"), 7, ["'eligible' does not parse", "position"]),
    (lambda t: t.replace("top = 3", "top = 40"), 1, ["'top'", "1 to 25"]),
    (lambda t: t.replace("top = 3", "tpo = 3"), 1, ["'tpo'", "did you mean 'top'"]),
    (lambda t: t.replace("cost = 4.0", 'cost = "four"'), 6, ["'cost'", "finite number"]),
    (lambda t: t.replace('target = "owns_savings"\n', ""), 11, ["'target' is missing"]),
    (lambda t: t.replace("exclude_owned = true", "exclude_owned = 1"), 8, ["'exclude_owned'"]),
])
def test_bad_catalogue_is_exit_2_naming_line_and_key(tmp_path: Path, edit, line: int, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        load_catalogue(_write(tmp_path, edit(GOOD)))
    message = str(info.value)
    assert info.value.exit_code == 2
    assert f"line {line}:" in message, message
    for word in words:
        assert word in message, message


def test_unknown_columns_and_types_name_the_line(tmp_path: Path) -> None:
    cat = load_catalogue(_write(tmp_path, GOOD))
    schema = pa.schema([("customer_id", pa.int64()), ("age", pa.float64()), ("regoin", pa.string()),
                        ("income", pa.float64()), ("owns_car_insurance", pa.int8()), ("owns_savings", pa.bool_())])
    with pytest.raises(UsageError, match=r"line 7: offer 'car_insurance': rule names column 'region'.*did you mean 'regoin'"):
        check_columns(cat, schema, targets=True)
    schema = schema.set(2, pa.field("region", pa.int32()))
    with pytest.raises(UsageError, match=r"line 7: .*compares number with text"):
        check_columns(cat, schema, targets=True)
    schema = schema.set(2, pa.field("region", pa.string())).remove(5)
    with pytest.raises(UsageError, match=r"line 13: offer 'savings': target column 'owns_savings' is not in the input"):
        check_columns(cat, schema, targets=True)


def test_not_toml_is_exit_2(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="line 2"):
        load_catalogue(_write(tmp_path, "top = 3\n[[offer]\n"))


def test_rules_are_three_valued_and_vectorised() -> None:
    table = pa.table({
        "age": pa.array([17.0, 18.0, None, 40.0, float("nan"), 65.0]),
        "region": pa.array(["north", "east", "north", None, "south", "west"]).dictionary_encode(),
        "vip": pa.array([True, False, True, None, False, True]),
        "income": pa.array([1.0, None, 3.0, 4.0, 5.0, 6.0]),
    })

    def rows(text: str) -> list[int]:
        return np.flatnonzero(expr.mask(expr.parse(text), table)).tolist()

    assert rows("age >= 18") == [1, 3, 5]                       # null and NaN are unknown: not eligible
    assert rows("not (age >= 18)") == [0]                       # not unknown is unknown
    assert rows("age is null or age >= 18") == [1, 2, 3, 4, 5]   # NaN counts as null
    assert rows("region in ['north', 'east']") == [0, 1, 2]
    assert rows("region not in ['north', 'east']") == [4, 5]     # a null region is unknown
    assert rows("vip == true and not (income is null)") == [0, 2, 5]
    assert rows("18 <= age and age < 65 or region = 'west'") == [1, 3, 5]
    assert rows("`age` > 17 and (region is not null)") == [1, 5]
    for bad in ("age >=", "age > 1 1", "(age > 1", "age", "__import__('os')", "age > 1 ; x", "region in ('a')"):
        with pytest.raises(expr.RuleError):
            expr.parse(bad)


def test_ownership_reads_01_boolean_and_positive_targets() -> None:
    from engine.offers.recommend import owned_mask

    assert owned_mask(pa.chunked_array([[1, 0, None, 2]], pa.int8()), None).tolist() == [True, False, False, False]
    assert owned_mask(pa.array([True, False, None]), None).tolist() == [True, False, False]
    assert owned_mask(pa.array(["yes", "no", None]).dictionary_encode(), "yes").tolist() == [True, False, False]
    assert owned_mask(pa.array([3, 2, None], pa.int64()), "3").tolist() == [True, False, False]
