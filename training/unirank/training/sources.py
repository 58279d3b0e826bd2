"""Data specs (``--data``) and the sources that turn them into canonical logs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from unirank.training.logs import LogData
from unirank.training.synthetic import SyntheticConfig, generate

KNOWN_KINDS: tuple[str, ...] = ("synthetic", "movielens", "logs")
USAGE = "synthetic | movielens:PATH (a MovieLens release directory) | logs:PATH (UniRank log format)"


class DataSpecError(ValueError):
    """A ``--data`` value this version cannot read; the message says what it accepts."""


@dataclass(frozen=True)
class DataSpec:
    """``KIND`` or ``KIND:PATH``: ``synthetic``, ``movielens:data/ml-1m``, ``logs:exports/2026-05``."""

    kind: str
    path: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}" if self.path else self.kind


def parse_data_spec(text: str) -> DataSpec:
    """Parse and check a data spec; unknown kinds or missing paths raise :class:`DataSpecError`."""
    kind, _, path = text.strip().partition(":")
    kind = kind.lower()
    if kind == "synthetic":
        if path:
            raise DataSpecError(f"--data synthetic takes no path (got {text!r}); use --size and --seed")
        return DataSpec(kind)
    if kind in ("movielens", "logs"):
        if not path:
            raise DataSpecError(f"--data {kind} needs a directory: --data {kind}:PATH")
        return DataSpec(kind, path)
    raise DataSpecError(f"unknown --data {text!r}; supported: {USAGE}")


def load_logs(
    spec: DataSpec | str, size: str = "default", seed: int = 0, items: int | None = None
) -> LogData:
    """Canonical logs for a spec; ``size``, ``seed`` and ``items`` (the catalogue size in place of
    the preset's) drive the synthetic generator only.

    A file that cannot be read raises :class:`DataSpecError` with the loader's message.
    """
    from unirank.artifact.logformat import LogFormatError
    from unirank.training.logreader import read_logs
    from unirank.training.movielens import MovieLensFormatError, load_movielens

    parsed = parse_data_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "synthetic":
        config = SyntheticConfig.preset(size)
        if items is not None:
            config = dataclasses.replace(config, n_items=items)
            log = generate(config, seed)
            log.provenance["items"] = items
        else:
            log = generate(config, seed)
        log.provenance["size"] = size
        return log
    try:
        if parsed.kind == "movielens":
            return load_movielens(Path(parsed.path))
        return read_logs(Path(parsed.path))
    except (MovieLensFormatError, LogFormatError) as exc:
        raise DataSpecError(str(exc)) from None
    except OSError as exc:
        raise DataSpecError(f"--data {parsed}: {exc}") from None
