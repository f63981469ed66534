"""Arithmetic on S3 object keys: midpoints and sizes of key ranges, for splitting a listing.

S3 lists keys in UTF-8 binary order, which for valid strings is Python's code-point order of
``str``. To bisect a range of keys, a key is read as a number in base :data:`BASE`, one digit
per character, in a compact alphabet that makes bisection converge fast for ASCII names:

- code points ``0x20`` (space) .. ``0x7E`` (``~``) are the digits ``0`` .. ``94``;
- every code point ``>= 0x7F`` is the one top digit :data:`TOP_DIGIT` (``95``);
- control characters below ``0x20`` share digit ``0`` with the space;
- "the end of the key space" is an endless run of top digits.

The midpoint of two keys is the average of their numbers (with one digit more than the longer
key), written back as characters: while the average still agrees digit for digit with the lower
key, the lower key's own characters are kept (so non-ASCII and control characters survive);
after that, digit ``d < 95`` is ``chr(0x20 + d)`` (but never a new ``/``: :data:`DELIMITER`)
and the top digit is :data:`TOP_CHAR`. The result is only a candidate: :func:`midpoint`
returns it only where ``low < m < high`` holds in real string order, else ``None`` (for
example between ``"a"`` and ``"a "``, where no string of the alphabet lies between, or between
two keys whose first difference is between two non-ASCII characters, which share a digit).

Hand-written: no well-kept library does S3 key-range bisection (sort-key arithmetic in
databases works on bytes of fixed-width encodings, not on S3 keys with a listing prefix).
"""

from __future__ import annotations

#: The lowest character of the compact alphabet (digit 0).
FIRST_CHAR = 0x20
#: The highest ASCII character of the alphabet (digit 94).
LAST_ASCII_CHAR = 0x7E
#: The digit of every code point above :data:`LAST_ASCII_CHAR` (and of the end of key space).
TOP_DIGIT = LAST_ASCII_CHAR - FIRST_CHAR + 1
#: Digits per character position.
BASE = TOP_DIGIT + 1
#: The character a top digit becomes when it is not copied from the lower key: the smallest
#: code point that has the top digit, so a midpoint stays as low as its digits say.
TOP_CHAR = chr(LAST_ASCII_CHAR + 1)
#: A midpoint never gets this character beyond the part it copies from the lower key: some
#: S3-compatible stores (SeaweedFS among them) read a ``StartAfter`` as a folder path and list
#: out of order after a ``/`` that names no folder. Where the average has it, the midpoint ends
#: there with :data:`DELIMITER_ABOVE` instead, or, where that is not below the upper bound,
#: with :data:`DELIMITER_BELOW`.
DELIMITER = "/"
#: The smallest string above every string that continues with ``/`` at that position.
DELIMITER_ABOVE = chr(ord(DELIMITER) + 1)
#: A string just below ``/`` at that position (the character before it, then the top one).
DELIMITER_BELOW = chr(ord(DELIMITER) - 1) + TOP_CHAR
#: Digits beyond the longer bound used when averaging: one is enough for two bounds whose
#: digit strings differ to have a digit string strictly between them.
EXTRA_DIGITS = 1


def digit(char: str) -> int:
    """The digit (``0`` .. :data:`TOP_DIGIT`) of one character."""
    code = ord(char)
    if code > LAST_ASCII_CHAR:
        return TOP_DIGIT
    return max(code - FIRST_CHAR, 0)


def _char(value: int) -> str:
    return TOP_CHAR if value == TOP_DIGIT else chr(FIRST_CHAR + value)


def _number(key: str, width: int, *, end_after: int | None = None) -> int:
    """``key`` as a ``width``-digit number, cut or padded with zeros; with ``end_after``, every
    digit from that position on is the top digit (the end of the key space after a prefix)."""
    value = 0
    for position in range(width):
        if end_after is not None and position >= end_after:
            d = TOP_DIGIT
        elif position < len(key):
            d = digit(key[position])
        else:
            d = 0
        value = value * BASE + d
    return value


def _digits(value: int, width: int) -> list[int]:
    out = [0] * width
    for position in range(width - 1, -1, -1):
        value, out[position] = divmod(value, BASE)
    return out


def _check_bounds(low: str | None, high: str | None, prefix: str) -> str:
    low = prefix if low is None else low
    for name, key in (("low", low), ("high", high)):
        if key is not None and not key.startswith(prefix):
            raise ValueError(f"{name} bound {key!r} does not start with the prefix {prefix!r}")
    return low


def midpoint(low: str | None, high: str | None, *, prefix: str = "") -> str | None:
    """A key ``m`` with ``low < m < high`` in S3 (code-point) order, near the middle of the
    range in the compact alphabet, or ``None`` where none is found.

    ``low=None`` means the start of ``prefix`` (``prefix`` itself); ``high=None`` means the end
    of the keys under ``prefix``. Both bounds, when given, must start with ``prefix``, and so
    does ``m``. ``m`` is cut to the shortest length, at least one character longer than
    ``low`` where it can be, that still lies strictly between the bounds, so boundaries do not
    grow longer split after split; it has no ``/`` beyond what it copies from ``low`` (see
    :data:`DELIMITER`).
    """
    low = _check_bounds(low, high, prefix)
    if high is not None and not low < high:
        return None
    width = max(len(low), len(high) if high is not None else 0) + EXTRA_DIGITS
    low_value = _number(low, width)
    if high is None:
        high_value = _number(prefix, width, end_after=len(prefix))
    else:
        high_value = _number(high, width)
    if high_value - low_value < 2:
        return None
    mid = _digits((low_value + high_value) // 2, width)
    chars = []
    copying = True
    tails = [""]
    for position, value in enumerate(mid):
        if copying and position < len(low) and digit(low[position]) == value:
            chars.append(low[position])
            continue
        copying = False
        char = _char(value)
        if char == DELIMITER:  # see DELIMITER: just above it, else just below it
            tails = [DELIMITER_ABOVE, DELIMITER_BELOW]
            break
        chars.append(char)
    head = "".join(chars)
    for candidate in (head + tail for tail in tails):
        for length in range(min(len(low) + 1, len(candidate)), len(candidate) + 1):
            m = candidate[:length]
            if low < m and (high is None or m < high) and m.startswith(prefix):
                return m
    return None


def span(low: str | None, high: str | None, *, prefix: str = "", width: int) -> int:
    """The size of the key range ``(low, high]`` in the compact alphabet, counting the first
    ``width`` characters after ``prefix`` (``None`` bounds as in :func:`midpoint`): comparable
    between ranges under the same prefix measured with the same ``width``."""
    low = _check_bounds(low, high, prefix)
    low_value = _number(low[len(prefix) :], width)
    if high is None:
        high_value = _number("", width, end_after=0)
    else:
        high_value = _number(high[len(prefix) :], width)
    return max(high_value - low_value, 0)
