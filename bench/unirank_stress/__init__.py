"""``make stress``: the long hardening runs against real UniRank servers, written up as
docs/reliability.md; a sibling of :mod:`unirank_bench`, whose server-process harness
(:mod:`unirank_bench.servers`) and load generator (:mod:`unirank_bench.loadgen`) it drives.

One module per section of the report (inputs, overload, sigterm, faults, attacks), what they share
in ``common``, the command and the report in ``__main__``. May import: the UniRank packages,
``unirank_bench``, and the hardening tests' cases and fixtures (``tests.conftest``,
``tests.hardening``), whose long versions these runs are; run from the repository root.
"""
