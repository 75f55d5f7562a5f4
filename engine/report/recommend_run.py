"""The recommend run's report, ``_report.html`` in the output: offers, budgets, eligibility, drift.

Built from the run's manifest only (every figure in it has already passed engine/privacy.py's
gates: per-offer figures of fewer than the minimum customers, or of their complement, and
small drift bins are blank), with the pieces of the score run report (engine/report/drift.py:
the drift heading, the feature charts and tables) and the page of engine/report/html.py
(every text escaped; nothing loaded from elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.io.commit import write_atomic
from engine.report.drift import drift_header, drifted_features, feature_charts, feature_tables
from engine.report.html import esc, page, pyplot, table


def render_recommend_report(manifest: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The report's HTML and its data (totals, offers, budgets, drift level) for a recommend manifest."""
    totals = manifest.get("totals", {})
    offers = manifest.get("offers", [])
    budgets = manifest.get("budgets")
    drift = manifest.get("drift", {})
    body: list[str] = []
    privacy = manifest.get("privacy") or {}
    if privacy.get("suppressed"):
        body.append('<p id="privacy-suppressed"><b>Suppressed for privacy</b> (no statistic of fewer than '
                    f'{privacy.get("minimum_customers", 20)} distinct customers is shown; the recommendations '
                    "themselves are published): " + "; ".join(esc(s) for s in privacy["suppressed"]) + ".</p>")
    body.append("<h2>Rows</h2>")
    body.append(table(["rows in", "offers written", "customers with an offer", "rows rejected", "rows without id",
                       "bad-row policy", "parts", "parts reused"],
                      [(totals.get("rows_in"), totals.get("rows_out"), totals.get("customers_with_offer"),
                        totals.get("rows_rejected"), totals.get("rows_null_id"), totals.get("on_bad_rows"),
                        totals.get("parts"), totals.get("parts_reused"))], left=0, css_id="totals"))
    body.append("<h2>Offers</h2>")
    body.append(f"<p>Top {esc(manifest.get('top'))} offers per customer by expected value (propensity × value − "
                "cost), among the offers each customer is eligible for and does not own. Shares are of the "
                "customers scored; a blank cell is a figure of too few customers.</p>")
    body.append(table(["offer", "customers", "expected value", "eligible share", "owned share", "budget",
                       "budget use", "price λ", "withdrawn"],
                      [(o.get("offer"), o.get("customers"), o.get("expected_value"), o.get("eligible_share"),
                        o.get("owned_share"), o.get("budget"), o.get("budget_used"), o.get("lambda"),
                        o.get("withdrawn")) for o in offers], css_id="offers"))
    rules = (manifest.get("catalogue") or {}).get("rules")
    if rules:
        body.append(f'<p>Association rules: {esc(rules.get("rules"))} rules of {esc(rules.get("path"))} '
                    f'(`engine rules`, {esc(rules.get("form"))} form). Per offer, the rules that conclude its item, '
                    "and the recommendations whose <code>rule</code> column names one (blank: too few customers "
                    "on one side).</p>")
        body.append(table(["offer", "rules for its item", "recommendations with a rule"],
                          [(o.get("offer"), o.get("rules"), o.get("with_rule")) for o in offers], css_id="rules"))
    if budgets:
        gap = budgets.get("gap")
        body.append(f'<p id="budgets">Budgets by dual prices: {esc(budgets.get("passes"))} full pass(es); achieved '
                    f'expected value {esc(_num(budgets.get("achieved_value")))}, dual bound '
                    f'{esc(_num(budgets.get("dual_bound")))}'
                    + (f", gap at most {gap:.2%}" if isinstance(gap, float) else "") + "."
                    + (f' Prices that are cuts (customers exactly at the price split by a hash of their id): '
                       f'{esc(", ".join(budgets["cut_offers"]))}.' if budgets.get("cut_offers") else "") + "</p>")
    head, level = drift_header(drift, fail_flag=False)
    body.extend(head)
    if drifted_features(drift):   # matplotlib only for the drifted features' panels
        with pyplot() as plt:
            charts, drifted = feature_charts(plt, drift)
    else:
        charts, drifted = feature_charts(None, drift)
    body.extend(charts)
    body.extend(feature_tables(drift))
    model, inp = manifest.get("model", {}), manifest.get("input", {})
    cat = manifest.get("catalogue", {})
    subtitle = (f"run {manifest.get('run_id', '?')} · model {model.get('path', '?')} "
                f"({str(model.get('content_hash', ''))[:19]}) · input {inp.get('path', '?')} · catalogue "
                f"{cat.get('source', '?')} · output {manifest.get('output', {}).get('path', '?')}")
    data = {"kind": "recommend", "run_id": manifest.get("run_id"), "totals": totals, "offers": offers,
            "budgets": budgets, "level": level, "drifted": [n for n, _ in drifted],
            "suppressed": privacy.get("suppressed", [])}
    return page("Recommendation run report", subtitle, body, data), data


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:,.2f}"


def write_recommend_report(manifest: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Write the report (atomically) and return its data."""
    text, data = render_recommend_report(manifest)
    write_atomic(Path(path), text.encode("utf-8"))
    return data
