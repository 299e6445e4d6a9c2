"""Benchmarks a person can read: ``python -m pyepoll.bench SCENARIO``.

Benchmarks are not tests: they print tables of medians, min-max ranges and
ratios to a named reference, measured side by side in one run, and with
``--plot FILE.png`` draw a chart.  ``--smoke`` runs a scenario tiny and
short, checking that every compared implementation answered correctly.
"""
