"""dsched's deterministic simulation: ``python -m sim``.

SimPy drives the very ``core`` state machines and ``core.driver`` procedures that a node runs,
with the real pysyncobj Raft (``sim/raftnet.py``) under simulated time, a simulated network and
the store model, and injects crashes, pauses, partitions and store restarts while a checker
holds the invariants of issue #5. One seed, one run: a failing seed replays exactly.
"""
