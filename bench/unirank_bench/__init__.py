"""UniRank benchmark harness: load generator, floors, MLServer peer, reports (see docs/benchmarks.md)."""
