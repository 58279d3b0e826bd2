"""The rendered Prometheus rules: shipped up to date per profile, valid (``promtool check rules``),
and each alert fires on a synthetic series that should fire it and stays silent on one that should
not (``promtool test rules``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from unirank.server.alerts import main as alerts_main
from unirank.server.alerts import render_file, render_rules
from unirank.server.config import ProfileError, load_profile, parse_profile

from ..conftest import profile_with

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "profiles").glob("*.toml"))
TASK = "search"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed; .ci/run installs Debian's prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_shipped_rules_are_current_and_valid(profile: Path, promtool: str, tmp_path: Path) -> None:
    shipped = ROOT / "deploy" / "prometheus" / f"{profile.stem}.rules.yml"
    out = tmp_path / "rules.yml"
    assert alerts_main(["alerts", "--profile", str(profile), "--out", str(out)]) == 0
    assert out.read_text() == shipped.read_text(), f"re-render {shipped} with `unirank alerts`"
    check = subprocess.run([promtool, "check", "rules", str(shipped)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    served = load_profile(profile).tasks
    assert f"SUCCESS: {len(served) * 42} rules found" in check.stdout


def test_a_latency_threshold_between_buckets_is_refused() -> None:
    profile = profile_with(tasks={TASK: {"alerts": {"latency_threshold_ms": 120}}})
    with pytest.raises(ProfileError, match="latency_threshold_ms = 120 is not a bound"):
        render_file(profile)


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    selector = ",".join(f'{k}="{v}"' for k, v in {"unirank_task_type": TASK, **labels}.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


def _alert(rules: dict[str, Any], name: str) -> dict[str, Any]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name and rule["labels"]["unirank_task_type"] == TASK:
                return rule
    raise AssertionError(name)


def _case(
    rules: dict[str, Any], name: str, at: str, fire: list[dict[str, str]], silent: list[dict[str, str]]
) -> list[dict[str, Any]]:
    """Two test groups: ``fire`` series raise exactly the alert ``name`` at ``at``, ``silent`` none."""
    rule = _alert(rules, name)
    expected = [{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}]
    return [
        {
            "input_series": fire,
            "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected}],
        },
        {"input_series": silent, "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": []}]},
    ]


def _run(promtool: str, tmp_path: Path, rules_file: Path, interval: str, tests: list[dict[str, Any]]) -> None:
    for test in tests:
        test["interval"] = interval
    spec = {"rule_files": [str(rules_file)], "evaluation_interval": interval, "tests": tests}
    test_file = tmp_path / f"test-{interval}.yml"
    test_file.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


REQUESTS = "unirank_server_requests_total"
CODE = "rpc_response_status_code"
DURATION = "rpc_server_call_duration_seconds"


def test_every_alert_fires_on_its_case_and_only_then(promtool: str, tmp_path: Path) -> None:
    profile = parse_profile(
        {
            "name": "alerts-test",
            "tasks": {
                TASK: {
                    "alerts": {
                        "availability_target": 0.999,
                        "latency_threshold_ms": 100,
                        "latency_target": 0.99,
                        "min_requests_per_s": 1.0,
                        "ctr_drop_ratio": 0.5,
                        "min_impressions_per_s": 0.1,
                        "max_fallback_rate": 0.05,
                    }
                }
            },
        }
    )
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(render_file(profile))
    rules = render_rules(profile)
    per_minute = [
        # 100 rps, 10 % server errors: 100x the 0.1 % budget. Silent: 0.5 % errors (under 14.4x and
        # 6x); and 10 % errors at 0.1 rps (under the minimum-traffic guard).
        *_case(
            rules,
            "UniRankAvailabilityBudgetBurnFast",
            "65m",
            [
                _series(REQUESTS, "0+5400x70", **{CODE: "OK"}),
                _series(REQUESTS, "0+600x70", **{CODE: "UNAVAILABLE"}),
            ],
            [
                _series(REQUESTS, "0+5970x70", **{CODE: "OK"}),
                _series(REQUESTS, "0+30x70", **{CODE: "UNAVAILABLE"}),
            ],
        ),
        *_case(
            rules,
            "UniRankAvailabilityBudgetBurnFast",
            "65m",
            [
                _series(REQUESTS, "0+5400x70", **{CODE: "OK"}),
                _series(REQUESTS, "0+600x70", **{CODE: "INTERNAL"}),
            ],
            [_series(REQUESTS, "0+5x70", **{CODE: "OK"}), _series(REQUESTS, "0+1x70", **{CODE: "INTERNAL"})],
        ),
        # 17 % of calls above 100 ms (budget 1 %); silent: 0.2 %. Client errors are no errors.
        *_case(
            rules,
            "UniRankLatencyBudgetBurnFast",
            "65m",
            [_series(f"{DURATION}_count", "0+6000x70"), _series(f"{DURATION}_bucket", "0+5000x70", le="0.1")],
            [
                _series(f"{DURATION}_count", "0+6000x70"),
                _series(f"{DURATION}_bucket", "0+5988x70", le="0.1"),
                _series(REQUESTS, "0+5400x70", **{CODE: "OK"}),
                _series(REQUESTS, "0+600x70", **{CODE: "INVALID_ARGUMENT"}),
            ],
        ),
        # 14 % of answers from the fallback for 20 min (max 5 %); silent: 1.6 %.
        *_case(
            rules,
            "UniRankFallbackRateHigh",
            "40m",
            [
                _series("unirank_rankings_total", "0+600x45", unirank_served_by="model"),
                _series("unirank_rankings_total", "0+100x45", unirank_served_by="fallback"),
            ],
            [
                _series("unirank_rankings_total", "0+600x45", unirank_served_by="model"),
                _series("unirank_rankings_total", "0+10x45", unirank_served_by="fallback"),
            ],
        ),
    ]
    _run(promtool, tmp_path, rules_file, "1m", per_minute)
    # Slow burns and the CTR baseline need days of history: 10-minute samples.
    week, hours = 7 * 24 * 6, 3 * 6  # samples in a week, then 3 h more
    slow_at = "3d6h"
    ok, bad = 60_000 - 120, 120  # per 10 min at 100 rps, 0.2 % errors: 2x the budget, under 6x
    quiet_bad = 30  # 0.05 %: within the budget
    per_ten_minutes = [
        *_case(
            rules,
            "UniRankAvailabilityBudgetBurnSlow",
            slow_at,
            [
                _series(REQUESTS, f"0+{ok}x500", **{CODE: "OK"}),
                _series(REQUESTS, f"0+{bad}x500", **{CODE: "UNAVAILABLE"}),
            ],
            [
                _series(REQUESTS, f"0+{ok}x500", **{CODE: "OK"}),
                _series(REQUESTS, f"0+{quiet_bad}x500", **{CODE: "UNAVAILABLE"}),
            ],
        ),
        # CTR 10 % for a week, then 2 % for 3 h (under half of a day and a week ago); silent: steady.
        *_case(
            rules,
            "UniRankCtrDrop",
            "7d2h30m",
            [
                _series("unirank_kpi_impressions_total", f"0+600x{week + hours}"),
                _series(
                    "unirank_kpi_events_total",
                    f"0+60x{week} {60 * week + 12}+12x{hours - 1}",
                    unirank_kpi_event="click",
                ),
            ],
            [
                _series("unirank_kpi_impressions_total", f"0+600x{week + hours}"),
                _series("unirank_kpi_events_total", f"0+60x{week + hours}", unirank_kpi_event="click"),
            ],
        ),
    ]
    _run(promtool, tmp_path, rules_file, "10m", per_ten_minutes)
