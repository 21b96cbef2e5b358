"""Chaos campaign: the whole pipeline as separate processes, with faults injected at random.

:mod:`tests.chaos.harness` starts a broker (one, or a three-node KRaft cluster), the sim agent
for 64 GPUs with a sim scheduler, the Faust worker, the sink, the alert router (posting to a
local webhook receiver) and ``hpcinsight serve``, then, at seeded random moments, kills
(SIGKILL), stops (SIGSTOP, then SIGCONT) and restarts each of them and the brokers, and fills
the embedded store's disk for a while. At the end it checks what the store and the receiver hold
against what the agent sent. ``python -m tests.chaos --help`` runs it from the command line and
writes its result table as Markdown; ``tests/integration/test_chaos.py`` runs a short profile.
"""
