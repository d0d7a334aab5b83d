"""Signals of the scenario engine, for the apps above it (the ping tree continues a
distribution when an offer's run finishes; tracking may react to runs too).

``run_finished`` is sent after the transaction that finished the run committed, with
``run_id``, ``status``, ``result`` (the run's last answer) and ``variables`` (what the
run was started with and set: a caller that started it with a marker, e.g. the ping
tree's ``DISTRIBUTION_ID``, recognises its runs without a query). A receiver that needs
more reads the run. Receivers must be idempotent: a re-driven run never finishes twice,
but a receiver may be called again after its own crash by whatever re-drives it.
"""

from __future__ import annotations

from django.dispatch import Signal

run_finished = Signal()
