"""UniRank benchmark harness: load generator, floors, MLServer peer, reports (see docs/benchmarks.md).

May import: every ``unirank`` package (it drives real servers and trains its own artifacts);
nothing in the product imports it.
"""
