"""Section 1 of the stress report, bad input: the fuzz test at full size, and every input limit
probed by name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.conftest import TASK_NAMES, profile_with, running_server
from tests.hardening.test_limits import CASES, LIMITS, _request
from unirank.client import AsyncRecommenderClient, UniRankError
from unirank_stress.common import REPO, error_of, md_table


def run_fuzz(artifact: Path, examples: int, workdir: Path) -> list[str]:
    tally_path = workdir / "fuzz.json"
    env = {
        **os.environ,
        "UNIRANK_TEST_ARTIFACT": str(artifact),
        "UNIRANK_FUZZ_EXAMPLES": str(examples),
        "UNIRANK_FUZZ_REPORT": str(tally_path),
    }
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=3600"]
    result = subprocess.run(
        [*command, "tests/hardening/test_fuzz.py"], cwd=REPO, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"stress: fuzz {summary} in {elapsed:.0f} s", flush=True)
    counts: dict[str, int] = json.loads(tally_path.read_text()) if tally_path.is_file() else {}
    strategies = sorted({key.split("|")[0] for key in counts})
    codes = sorted({key.split("|")[1] for key in counts} - {"requests", "OK"})
    codes = [c for c in codes if not c.startswith(("field ", "OK "))]
    rows = []
    for strategy in strategies:
        row: list[object] = [f"`{strategy}`", counts.get(f"{strategy}|requests", 0)]
        row.append(counts.get(f"{strategy}|OK", 0))
        rankings = counts.get(f"{strategy}|OK rankings", 0)
        by_fallback = counts.get(f"{strategy}|OK rankings by fallback", 0)
        row.append(f"{rankings} ({by_fallback})" if rankings else "")
        row += [counts.get(f"{strategy}|{code}", 0) for code in codes]
        rows.append(row)
    total = sum(counts.get(f"{s}|requests", 0) for s in strategies)
    bad = sum(counts.get(f"{s}|{c}", 0) for s in strategies for c in ("INTERNAL", "UNKNOWN"))
    violations: Counter[str] = Counter()
    for key, value in counts.items():
        strategy, _, what = key.partition("|")
        if what.startswith("field "):
            violations[re.sub(r"^requests\[i\]\.", "", what[len("field ") :])] += value
    lines = [
        "## 1. Bad input",
        "",
        f"**Fuzz**: `tests/hardening/test_fuzz.py` with `UNIRANK_FUZZ_EXAMPLES={examples}` against one real "
        f"server (cpu-realtime, relaxed timeouts): **{total:,} RPCs** in {elapsed:.0f} s; pytest says "
        f"`{summary}`. INTERNAL or UNKNOWN answers: **{bad}**. Every error carried a message and every "
        "INVALID_ARGUMENT a BadRequest whose violations each name a field and say why; every ranking had "
        "unique items, no NaN score and none of the excluded items; health answered SERVING afterwards "
        "(the test fails otherwise).",
        "",
        "Strategies: `structured` (half well-formed requests, half adversarial values: control and "
        "format characters, unpaired-looking unicode, 300-character strings, negative or huge numbers, "
        "no use-case, lists at and past the limits up to 20,000 ids, a 10,000-character query), `batch` "
        "(0 to 70 such requests in one RecommendBatch; the limit is 64), `damaged/*` (a valid request's "
        "bytes truncated, bit-flipped, with invalid UTF-8 in a string field, an unknown field, a wrong "
        "wire type, a length prefix of up to 4 GiB, or 50 to 2,000 nested groups), `garbage/*` (random "
        "bytes to three methods).",
        "",
        *md_table(["strategy", "RPCs", "OK", "rankings (by fallback)", *codes], rows),
        "Violations reported (BadRequest field: description, numbers blanked), over all strategies:",
        "",
        *md_table(["field violation", "count"], [[f"`{k}`", v] for k, v in sorted(violations.items())]),
    ]
    if result.returncode != 0:
        lines += ["**The fuzz run failed:**", "", "```", result.stdout[-3000:], "```", ""]
    return lines


async def probe_limits(artifact: Path) -> list[str]:
    profile = profile_with(server=LIMITS, tasks={name: {"timeout_ms": 10_000} for name in TASK_NAMES})
    rows = []
    async with (
        running_server(profile, artifact) as server,
        AsyncRecommenderClient(server.address, timeout=10) as client,
    ):
        for case, request, field, _ in CASES:
            try:
                await client.recommend(request)
                rows.append([case, f"`{field}`", "OK (not refused!)", ""])
            except UniRankError as error:
                described = dict(error.field_violations)
                rows.append([case, f"`{field}`", error.code, described.get(field, error.message)])
        huge = _request(context__device="x" * (3 * LIMITS["max_message_bytes"]))
        outcome = await error_of(lambda: client.recommend(huge))
        code, _, detail = outcome.partition(":")
        rows.append(["message at 3x the limit", "(transport)", code, detail.strip()])
    limits = ", ".join(f"`{k} = {v}`" for k, v in LIMITS.items())
    return [
        "**Each limit by name** (a server with `[server]` " + limits + "; the id, query and short-field "
        "limits are fixed by the codec: ids ≤ 128 characters without whitespace or control characters, "
        "queries ≤ 512 characters without control characters other than tab and newline, country / "
        "language / device ≤ 64 characters; `max_results` ≤ the use-case's `max_results_limit`):",
        "",
        *md_table(["input", "field", "observed", "description"], rows),
        "A request over `max_message_bytes` but within twice it is read and refused by the interceptor "
        "with INVALID_ARGUMENT naming the limit; past twice the limit gRPC itself cuts it off unread "
        "with RESOURCE_EXHAUSTED and no RetryInfo, so a client cannot mistake it for overload.",
        "",
    ]
