"""Offers: the catalogue, its eligibility rules, many propensity heads, and recommendation."""
