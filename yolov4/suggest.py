""""Did you mean ...?": the closest of a set of valid names to a mistyped one.

Used wherever a user names something from a fixed set (a pretrained model, a class of the
model), so that an error can offer the likely intended name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

#: How similar (difflib's ratio, 0 to 1) a valid name must be to the given one to be offered.
SIMILARITY_CUTOFF = 0.6


def closest(word: str, names: Iterable[str]) -> str | None:
    """The valid name most similar to ``word`` (case-insensitive), or ``None`` when none is
    close enough."""
    by_lower = {name.lower(): name for name in names}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=SIMILARITY_CUTOFF)
    return by_lower[found[0]] if found else None


def did_you_mean(word: str, names: Iterable[str]) -> str:
    """``"did you mean 'person'? "`` for the closest valid name, or ``""`` when none is close:
    ready to go in front of the rest of a message."""
    found = closest(word, names)
    return f"did you mean {found!r}? " if found else ""
