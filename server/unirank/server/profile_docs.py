"""Renders the profile reference (docs/profiles.md) from the typed config and the rule registry."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from unirank.server.config import (
    AlertsConfig,
    BatchingConfig,
    CacheConfig,
    ConnectionLimits,
    FallbackConfig,
    FeaturesSection,
    FreshnessConfig,
    GateRule,
    GateSection,
    GrantConfig,
    ImpressionsSection,
    KpiConfig,
    ModelSection,
    Profile,
    RetrievalConfig,
    RetrievalSourceConfig,
    RolloutGuards,
    RolloutSection,
    RuleConfig,
    RulesConfig,
    SecuritySection,
    ServerSection,
    TaskConfig,
    TelemetrySection,
)
from unirank.server.rules import RULES

BEGIN = "<!-- BEGIN GENERATED REFERENCE (make docs) -->"
END = "<!-- END GENERATED REFERENCE -->"

SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("(top level)", Profile),
    ("[model]", ModelSection),
    ("[model.batching]", BatchingConfig),
    ("[server]", ServerSection),
    ("[server.connections]", ConnectionLimits),
    ("[features]", FeaturesSection),
    ("[impressions]", ImpressionsSection),
    ("[security]", SecuritySection),
    ("[security.grants.NAME]", GrantConfig),
    ("[telemetry]", TelemetrySection),
    ("[gate]", GateSection),
    ("[rollout]", RolloutSection),
    ("[rollout.guards]", RolloutGuards),
    ("[tasks.NAME]", TaskConfig),
    ("[tasks.NAME.cache]", CacheConfig),
    ("[tasks.NAME.freshness]", FreshnessConfig),
    ("[tasks.NAME.fallback]", FallbackConfig),
    ("[tasks.NAME.retrieval]", RetrievalConfig),
    ("[tasks.NAME.gate]", GateRule),
    ("retrieval.sources entries", RetrievalSourceConfig),
    ("[tasks.NAME.rules]", RulesConfig),
    ("rules.pre / rules.post entries", RuleConfig),
    ("[tasks.NAME.kpi]", KpiConfig),
    ("[tasks.NAME.alerts]", AlertsConfig),
)


def _default(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.is_required():
        return "required"
    value: Any = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see section"
    try:
        return f"`{json.dumps(value)}`"
    except TypeError:
        return f"`{value!r}`"


def _constraints(model: type[BaseModel], name: str) -> str:
    parts = []
    for item in model.model_fields[name].metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "len >=")):
            if getattr(item, attr, None) is not None:
                parts.append(f"{symbol} {getattr(item, attr)}")
    annotation = model.model_fields[name].annotation
    text = str(annotation).replace("typing.", "")
    if "Literal" in text:
        parts.append(text[text.index("Literal") :])
    return ", ".join(parts)


def render_reference() -> str:
    lines = [BEGIN, ""]
    for title, model in SECTIONS:
        lines += [f"### {title}", "", "| key | default | allowed | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            doc = " ".join((field.description or "").split()).replace("|", "\\|")
            allowed = _constraints(model, name).replace("|", "\\|")
            lines.append(f"| `{name}` | {_default(model, name)} | {allowed} | {doc} |")
        lines.append("")
    lines += ["### Rules", "", "| rule | stage | parameters | what it does |", "|---|---|---|---|"]
    for name, spec in RULES.items():
        params = ", ".join(f"`{p}`" for p in spec.params.model_fields) or "none"
        lines.append(f"| `{name}` | {spec.stage} | {params} | {spec.doc} |")
    lines += ["", END]
    return "\n".join(lines)


def update(text: str) -> str:
    """``text`` with its generated block replaced by the current reference."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render_reference() + text[end:]


if __name__ == "__main__":
    import sys
    from pathlib import Path

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/profiles.md")
    before = path.read_text()
    after = update(before)
    if after == before:
        print(f"{path} is up to date")
    else:
        path.write_text(after)
        print(f"updated {path}")
