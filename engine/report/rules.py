"""The report of ``engine rules``: the top rules and a picture of which items go together.

Everything shown comes from the published itemsets, each held by at least the privacy
minimum of customers (:mod:`engine.itemsets.mine`): a pair held by fewer is a blank cell, never
a number. The picture is the lift of every frequent pair among the most held items (lift
1 = held together as often as chance says; above 1, together more often).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine.report.html import page, svg_heatmap, table

MAX_PICTURE_ITEMS = 30


def _pair_lifts(itemsets: Sequence[tuple[np.ndarray, np.ndarray]], customers: int,
                shown: np.ndarray) -> np.ndarray:
    """Lift of each frequent pair among ``shown`` item codes; NaN where the pair is not frequent."""
    single = np.zeros(int(shown.max()) + 1 if shown.size else 0, dtype=np.float64)
    sets1, counts1 = itemsets[0]
    for code, n in zip(sets1[:, 0], counts1):
        if code < single.size:
            single[code] = n
    pos = {int(c): i for i, c in enumerate(shown)}
    out = np.full((shown.size, shown.size), np.nan)
    if len(itemsets) > 1:
        sets2, counts2 = itemsets[1]
        for (a, b), n in zip(sets2, counts2):
            if int(a) in pos and int(b) in pos:
                lift = n * customers / (single[a] * single[b])
                out[pos[int(a)], pos[int(b)]] = out[pos[int(b)], pos[int(a)]] = lift
    return out


def write_rules_report(path: Path, rules: pa.Table, manifest: dict[str, Any],
                       itemsets: Sequence[tuple[np.ndarray, np.ndarray]], names: Sequence[str],
                       customers: int, *, top: int = 25) -> None:
    """Write ``_report.html``: run summary, the ``top`` rules by lift, the co-occurrence picture."""
    t = manifest["totals"]
    th = manifest["thresholds"]
    body = [
        "<h2>Run</h2>",
        table(["", "value"], [
            ["customers", customers], ["frequent items", t["frequent_items"]],
            *[[f"frequent itemsets of {k}", v] for k, v in t["frequent_itemsets"].items()],
            ["rules", t["rules"]], ["min support", th["min_support"]], ["min confidence", th["min_confidence"]],
            ["min lift", th["min_lift"]], ["max items in a rule", th["max_len"]],
            ["fewest customers behind any itemset", th["min_customers_in_effect"]],
        ]),
    ]
    head = rules.slice(0, top).to_pylist()
    body.append(f"<h2>Top {len(head)} rules by lift</h2>")
    body.append("<p>Customers who hold every item on the left also hold the items on the right with the "
                "given confidence; lift says how many times more often than customers in general.</p>")
    body.append(table(["customers who hold", "also hold", "customers", "support", "confidence", "lift",
                       "leverage"],
                      [[" + ".join(r["antecedent"]), " + ".join(r["consequent"]), int(r["customers"]),
                        r["support"], r["confidence"], r["lift"], r["leverage"]] for r in head], left=2))
    sets1, counts1 = itemsets[0]
    most = np.argsort(-counts1, kind="stable")[:MAX_PICTURE_ITEMS]
    shown = np.sort(sets1[most, 0])
    data: dict[str, Any] = {"customers": customers, "rules": t["rules"], "top_rules": [
        {k: (v if not isinstance(v, float) or np.isfinite(v) else None) for k, v in r.items()} for r in head]}
    if shown.size >= 2:
        lifts = _pair_lifts(itemsets, customers, shown)
        labels = [str(names[c]) for c in shown]
        finite = lifts[np.isfinite(lifts)]
        top_lift = float(max(2.0, np.nanmax(finite))) if finite.size else 2.0
        body.append("<h2>Which items go together</h2>")
        body.append(svg_heatmap(lifts.tolist(), labels, centre=1.0, top=top_lift, what="lift",
                                caption=f"The {len(labels)} items most customers hold: the lift of each pair. Red: "
                                        "held together more often than chance (lift > 1, full red at "
                                        f"{top_lift:.3g}); blue: less often. A blank cell is a pair held by fewer "
                                        f"than {th['min_customers_in_effect']} customers. Hover a cell for its lift.",
                                alt="heat map of the lift of item pairs"))
        data["picture"] = {"items": labels,
                           "lift": [[None if not np.isfinite(v) else float(v) for v in row] for row in lifts]}
    title = "Association rules"
    subtitle = f"{manifest['input']['path']} · run {manifest['run_id']} · engine {manifest['engine_version']}"
    path.write_text(page(title, subtitle, body, data), encoding="utf-8")
