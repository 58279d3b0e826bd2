"""UniRank benchmark harness: load generator, floors, MLServer peer, reports (see docs/benchmarks.md).

Its server-process harness (``servers``) and load generator (``loadgen``) are also what
``make stress`` (the sibling package ``unirank_stress``) and the hardening tests drive servers with.

May import: every ``unirank`` package (it drives real servers and trains its own artifacts);
nothing in the product imports it.
"""
