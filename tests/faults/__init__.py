"""The fault suite: bad inputs and faults, each with the exact outcome it must get (issue 22).

Every test here carries ``@pytest.mark.fault(area=..., outcome=...)``: ``area`` is one of :data:`AREAS`, ``outcome``
one of :data:`OUTCOMES` — ``"refused"`` (a named error: its type and the words that name the input and the fix are
asserted) or ``"handled"`` (accepted, and the right result is asserted). A test that fails is a silent wrong result,
an unclear error or a crash; one that times out is a hang. ``python -m tests.faults.count`` runs the suite and prints
the counts by area and outcome.
"""

AREAS = ("data", "callbacks", "tasks", "checkpoints", "cli", "ddp", "security")
OUTCOMES = ("refused", "handled")
