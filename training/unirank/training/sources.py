"""Data specs (``--data``) and the sources that turn them into canonical logs."""

from __future__ import annotations

from dataclasses import dataclass

from unirank.training.logs import LogData
from unirank.training.synthetic import SyntheticConfig, generate

KNOWN_KINDS: tuple[str, ...] = ("synthetic",)
PLANNED_KINDS: tuple[str, ...] = ("movielens", "logs")


class DataSpecError(ValueError):
    """A ``--data`` value this version cannot read; the message says what it accepts."""


@dataclass(frozen=True)
class DataSpec:
    """``KIND`` or ``KIND:PATH``, e.g. ``synthetic``, later ``movielens:data/ml-1m``."""

    kind: str
    path: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}" if self.path else self.kind


def parse_data_spec(text: str) -> DataSpec:
    """Parse and check a data spec; unknown or not-yet-supported kinds raise :class:`DataSpecError`."""
    kind, _, path = text.strip().partition(":")
    kind = kind.lower()
    if kind == "synthetic":
        if path:
            raise DataSpecError(f"--data synthetic takes no path (got {text!r}); use --size and --seed")
        return DataSpec(kind)
    if kind in PLANNED_KINDS:
        raise DataSpecError(f"--data {kind}:PATH is not supported yet; supported: {', '.join(KNOWN_KINDS)}")
    raise DataSpecError(f"unknown --data {text!r}; supported: {', '.join(KNOWN_KINDS)}")


def load_logs(spec: DataSpec | str, size: str = "default", seed: int = 0) -> LogData:
    """Canonical logs for a spec; ``size`` and ``seed`` drive the synthetic generator."""
    parsed = parse_data_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "synthetic":
        log = generate(SyntheticConfig.preset(size), seed)
        log.provenance["size"] = size
        return log
    raise DataSpecError(f"no loader for {parsed}")  # parse_data_spec keeps this unreachable
