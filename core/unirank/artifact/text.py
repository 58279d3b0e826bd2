"""Text normalisation shared by training (titles, queries) and serving (queries)."""

from __future__ import annotations

import re
import unicodedata

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased ASCII-folded alphanumeric tokens, in order, duplicates kept."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _TOKEN.findall(folded.lower())
