"""``unirank alerts --profile P``: Prometheus recording and alerting rules for each served use-case.

From each task's ``[tasks.NAME.alerts]`` thresholds:

- availability and latency SLOs as multiwindow, multi-burn-rate alerts (Google SRE workbook,
  "Alerting on SLOs"): 14.4x the error budget over 1 h and 5 min or 6x over 6 h and 30 min pages,
  1x over 3 d and 6 h opens a ticket; each also needs ``min_requests_per_s`` of traffic;
- a CTR drop against the same hour one day and one week earlier;
- the fallback rate.

Every ratio is a recording rule dividing two recorded sums (numerator and denominator summed
separately, never an average of per-replica ratios). The metric names are those the Prometheus
exporter writes for UniRank's OpenTelemetry instruments (``unirank.server.requests`` ->
``unirank_server_requests_total``; docs/observability.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unirank.server.config import AlertsConfig, Profile, ProfileError, load_profile
from unirank.server.telemetry.semconv import SERVER_ERROR_CODES
from unirank.server.telemetry.stats import LATENCY_BUCKETS_S

TASK = "unirank_task_type"
REQUESTS = "unirank_server_requests_total"
DURATION = "rpc_server_call_duration_seconds"
RANKINGS = "unirank_rankings_total"
IMPRESSIONS = "unirank_kpi_impressions_total"
EVENTS = "unirank_kpi_events_total"

BURN_RATES: tuple[tuple[str, float, str, str], ...] = (
    ("page", 14.4, "1h", "5m"),
    ("page", 6.0, "6h", "30m"),
    ("ticket", 1.0, "3d", "6h"),
)
"""(severity, burn rate, long window, short window): the workbook's recommended pairs; 14.4x for
an hour spends 2 % of a 30-day budget, 6x for 6 h 5 %, 1x for 3 d 10 %."""


def _seconds(window: str) -> int:
    return int(window[:-1]) * {"m": 60, "h": 3600, "d": 86_400}[window[-1]]


WINDOWS = sorted({w for _, _, long, short in BURN_RATES for w in (long, short)}, key=_seconds)
FALLBACK_WINDOW = "10m"
CTR_WINDOW = "1h"


def latency_bound(config: AlertsConfig) -> str:
    """The call-duration bucket bound (its ``le`` label as the exporter writes it) of the threshold."""
    threshold_s = config.latency_threshold_ms / 1000.0
    for bound in LATENCY_BUCKETS_S:
        if math.isclose(bound, threshold_s, rel_tol=1e-9):
            return f"{bound}"
    bounds = ", ".join(f"{b * 1000:g}" for b in LATENCY_BUCKETS_S)
    raise ProfileError(
        f"alerts.latency_threshold_ms = {config.latency_threshold_ms:g} is not a bound of the "
        f"call-duration histogram; use one of {bounds} (ms)"
    )


def _recording_rules(task: str, config: AlertsConfig) -> Iterator[dict[str, Any]]:
    sel = f'{TASK}="{task}"'
    errors = "|".join(sorted(code.name for code in SERVER_ERROR_CODES))
    le = latency_bound(config)

    def record(name: str, expr: str) -> dict[str, Any]:
        # The static label only restates what the expression selects; it tells the use-cases'
        # rules of one name apart (promtool refuses identical names with identical labels).
        return {"record": name, "expr": expr, "labels": {TASK: task}}

    def rate(name: str, metric: str, matchers: str, w: str) -> dict[str, Any]:
        return record(name, f"sum by ({TASK}) (rate({metric}{{{sel}{matchers}}}[{w}]))")

    def ratio(name: str, part: str, whole: str) -> dict[str, Any]:
        return record(name, f"{part}{{{sel}}} / {whole}{{{sel}}}")

    for w in WINDOWS:
        yield rate(f"task:unirank_rpcs:rate{w}", REQUESTS, "", w)
        yield rate(f"task:unirank_rpc_errors:rate{w}", REQUESTS, f',rpc_response_status_code=~"{errors}"', w)
        yield ratio(
            f"task:unirank_rpc_error_ratio:rate{w}",
            f"task:unirank_rpc_errors:rate{w}",
            f"task:unirank_rpcs:rate{w}",
        )
        yield rate(f"task:unirank_calls:rate{w}", f"{DURATION}_count", "", w)
        yield rate(f"task:unirank_calls_fast:rate{w}", f"{DURATION}_bucket", f',le="{le}"', w)
        slow = ratio(
            f"task:unirank_slow_call_ratio:rate{w}",
            f"task:unirank_calls_fast:rate{w}",
            f"task:unirank_calls:rate{w}",
        )
        yield {**slow, "expr": f"1 - {slow['expr']}"}
    w = FALLBACK_WINDOW
    yield rate(f"task:unirank_rankings:rate{w}", RANKINGS, "", w)
    yield rate(f"task:unirank_fallbacks:rate{w}", RANKINGS, ',unirank_served_by="fallback"', w)
    yield ratio(
        f"task:unirank_fallback_ratio:rate{w}",
        f"task:unirank_fallbacks:rate{w}",
        f"task:unirank_rankings:rate{w}",
    )
    w = CTR_WINDOW
    yield rate(f"task:unirank_kpi_impressions:rate{w}", IMPRESSIONS, "", w)
    yield rate(f"task:unirank_kpi_clicks:rate{w}", EVENTS, ',unirank_kpi_event="click"', w)
    yield ratio(
        f"task:unirank_kpi_ctr:ratio_rate{w}",
        f"task:unirank_kpi_clicks:rate{w}",
        f"task:unirank_kpi_impressions:rate{w}",
    )


def _burn_alerts(task: str, config: AlertsConfig) -> Iterator[dict[str, Any]]:
    sel = f'{TASK}="{task}"'
    slos = (
        ("Availability", "rpc_error_ratio", "rpcs", 1.0 - config.availability_target, "server errors"),
        (
            "Latency",
            "slow_call_ratio",
            "calls",
            1.0 - config.latency_target,
            f"RPCs slower than {config.latency_threshold_ms:g} ms",
        ),
    )  # fmt: skip
    for slo, ratio, traffic, budget, what in slos:
        for severity in ("page", "ticket"):
            terms = []
            for sev, factor, long, short in BURN_RATES:
                if sev != severity:
                    continue
                threshold = f"{factor * budget:.6g}"
                terms.append(
                    f"(task:unirank_{ratio}:rate{long}{{{sel}}} > {threshold}"
                    f" and task:unirank_{ratio}:rate{short}{{{sel}}} > {threshold}"
                    f" and task:unirank_{traffic}:rate{short}{{{sel}}} >= {config.min_requests_per_s:g})"
                )
            pairs = ", ".join(f"{f:g}x over {lg}/{sh}" for sev, f, lg, sh in BURN_RATES if sev == severity)
            yield {
                "alert": f"UniRank{slo}BudgetBurn{'Fast' if severity == 'page' else 'Slow'}",
                "expr": "\n  or ".join(terms),
                "labels": {"severity": severity, TASK: task, "slo": slo.lower()},
                "annotations": {
                    "summary": f"{task}: {what} burn the {slo.lower()} error budget ({pairs})",
                    "description": f"SLO {100 * (1 - budget):g} % over 30 days; a 14.4x burn spends 2 % "
                    "of the budget in an hour (task:unirank_*_ratio:rate* recording rules).",
                },
            }


def _kpi_alerts(task: str, config: AlertsConfig) -> Iterator[dict[str, Any]]:
    sel = f'{TASK}="{task}"'
    ctr = f"task:unirank_kpi_ctr:ratio_rate{CTR_WINDOW}{{{sel}}}"
    ratio = f"{config.ctr_drop_ratio:g}"
    yield {
        "alert": "UniRankCtrDrop",
        "expr": f"{ctr} < {ratio} * ({ctr} offset 1d)\n  and {ctr} < {ratio} * ({ctr} offset 1w)"
        f"\n  and task:unirank_kpi_impressions:rate{CTR_WINDOW}{{{sel}}} >= {config.min_impressions_per_s:g}",
        "for": "15m",
        "labels": {"severity": "ticket", TASK: task},
        "annotations": {
            "summary": f"{task}: click-through rate below {ratio} of the same hour a day and a week ago",
            "description": "task:unirank_kpi_ctr:ratio_rate1h against its value 1d and 1w earlier.",
        },
    }
    w = FALLBACK_WINDOW
    yield {
        "alert": "UniRankFallbackRateHigh",
        "expr": f"task:unirank_fallback_ratio:rate{w}{{{sel}}} > {config.max_fallback_rate:g}"
        f"\n  and task:unirank_rankings:rate{w}{{{sel}}} >= {config.min_requests_per_s:g}",
        "for": "10m",
        "labels": {"severity": "ticket", TASK: task},
        "annotations": {
            "summary": f"{task}: over {100 * config.max_fallback_rate:g} % of answers from the fallback",
            "description": "task:unirank_fallback_ratio:rate10m (fallback reasons: unirank_fallbacks_total).",
        },
    }


def render_rules(profile: Profile) -> dict[str, Any]:
    """The rule file of ``profile``: one group per served use-case, its recording rules first.

    One group, not a recording and an alerting one: rules of a group are evaluated in order, so an
    alert reads the ratios recorded at the same evaluation; groups run independently, and an alert
    evaluated before its recording group would read the previous evaluation's samples (gone past
    the 5 min lookback when the evaluation interval is longer).
    """
    groups = []
    for task, config in sorted(profile.tasks.items()):
        alerts = [*_burn_alerts(task, config.alerts), *_kpi_alerts(task, config.alerts)]
        for alert in alerts:
            alert["labels"]["unirank_profile"] = profile.name
        rules = [*_recording_rules(task, config.alerts), *alerts]
        groups.append({"name": f"unirank-{profile.name}-{task}", "rules": rules})
    return {"groups": groups}


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of dicts, lists and strings (strings double-quoted, JSON escapes: valid YAML)."""
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
    elif isinstance(value, list):
        for item in value:
            body = to_yaml(item, indent + 1).lstrip()
            lines.append(f"{pad}- {body}")
    else:
        lines.append(f"{pad}{json.dumps(value)}")
    return "\n".join(lines)


def render_file(profile: Profile) -> str:
    header = (
        f"# Prometheus rules of UniRank profile {profile.name!r}: written by "
        "`unirank alerts --profile`, do not edit (change [tasks.NAME.alerts] and re-render).\n"
    )
    return header + to_yaml(render_rules(profile)) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="unirank alerts", description="Prometheus rules of a UniRank profile"
    )
    parser.add_argument("--profile", required=True, help="deployment profile (TOML)")
    parser.add_argument("--out", help="write the rules here (default: standard output)")
    args = parser.parse_args(argv[1:])
    try:
        text = render_file(load_profile(args.profile))
    except ProfileError as exc:
        print(f"unirank alerts: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
