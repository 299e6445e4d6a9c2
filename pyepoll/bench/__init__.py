"""Benchmarks a person can read: ``python -m pyepoll.bench SCENARIO``.

Benchmarks are not tests: they print tables of medians, min-max ranges and
ratios to a named reference, measured side by side in one run, and with
``--plot FILE.png`` draw a chart.  ``--smoke`` runs a scenario tiny and
short, checking that every compared implementation answered correctly.

Scenarios: wait-scaling, idle-clients, echo, http, trigger, dropins, and
``all`` (a Markdown report plus charts).  The load client and the plain C
servers are compiled from ``pyepoll/bench/c/`` on first use (``cc``, cached
under ``~/.cache/pyepoll-bench``).  ``pip install pyepoll-io[bench]`` brings
uvloop, httptools and matplotlib; wrk and nginx are used when installed.
The network scenarios are Linux only.
"""
