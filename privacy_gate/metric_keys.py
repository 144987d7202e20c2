"""MLflow-safe metric keys: an injective, reversible escape of arbitrary strings.

MLflow accepts metric keys made of ``[A-Za-z0-9_/. -]`` (STYLE.md point 9 also rules out
the colon MLflow would take on POSIX), at most 250 characters, that ``posixpath.normpath``
leaves unchanged. Subgroup column names and values are arbitrary text (``>$50k``,
``<missing>``, ``M/F``, unicode), so each becomes one key *segment* through
`escape_segment`; fixed names (``patient_auc``, ``0.9``) are used as they are.

The escape is a code with ``_`` as escape character, applied character by character:

========================================  ===========================================
character                                 segment text
========================================  ===========================================
``A-Z a-z 0-9 - .`` and space             itself (but see the two exceptions below)
``_``                                     ``__``
any other code point below U+0100         ``_`` + 2 upper-case hex digits (``>`` is
                                          ``_3E``)
code points U+0100 to U+FFFF              ``_u`` + 4 upper-case hex digits
code points above U+FFFF                  ``_U`` + 6 upper-case hex digits
========================================  ===========================================

Exceptions, so that a segment is never ``.``, ``..``, empty or space-padded: a leading
``.`` and a leading or trailing space are written in hex (``_2E``, ``_20``), and the empty
string is the segment ``_``.

Why it is injective: every code word either is one character other than ``_`` or starts
with ``_`` followed by a character that alone fixes its length (``_`` -> 2, ``u`` -> 6,
``U`` -> 8, a hex digit -> 3). So the code words form a prefix-free set and a segment
splits into code words in exactly one way, left to right; `unescape_segment` maps each
code word back to its character (``_20`` and a literal space both to a space; the
lone ``_`` of the empty string is no code word, so it cannot occur in any other
segment). `unescape_segment` undoes `escape_segment` on every string, which makes the
escape injective: ``escape(a) == escape(b)`` implies
``a == unescape(escape(a)) == unescape(escape(b)) == b``. `unescape_segment` accepts
only the one canonical spelling (it re-escapes and compares), so it is the inverse of
`escape_segment` on its image, and raises ``ValueError`` on anything else.

Segments never contain ``/``, so a key splits back into its segments; a key longer than
250 characters is shortened by `shorten_key` to a prefix plus a last segment ``_H`` +
32 hex digits of its SHA-256. No escaped segment starts with ``_H`` (it is no code
word) and no fixed name does, so a shortened key never equals an unshortened one;
callers keep the full key in a mapping (the ``metric_keys_map.json`` artifact).

>>> escape_segment(">$50k")
'_3E_2450k'
>>> unescape_segment("_3E_2450k")
'>$50k'
>>> metric_key("subgroup", escape_segment("income"), escape_segment(">$50k"), "p_value")
'privacy_gate/subgroup/income/_3E_2450k/p_value'
"""

from __future__ import annotations

import hashlib
import re
import string

__all__ = [
    "KEY_PREFIX",
    "MAX_KEY_LENGTH",
    "escape_segment",
    "is_shortened",
    "join_key",
    "metric_key",
    "shorten_key",
    "split_key",
    "unescape_segment",
]

KEY_PREFIX = "privacy_gate"
"""The first segment of every key privacy-gate logs."""
MAX_KEY_LENGTH = 250
"""MLflow's limit on metric, param and tag keys (``MAX_ENTITY_KEY_LENGTH``)."""

_ESCAPE = "_"
_EMPTY = "_"  # the segment of the empty string: no code word, so no other segment
_LITERAL = frozenset(string.ascii_letters + string.digits + "-. ")
_HEX = frozenset("0123456789ABCDEF")
_WIDTH = {"u": 4, "U": 6}  # after "_u"/"_U"; a hex digit after "_" starts 2 hex digits
_SHORTENED_MARK = "_H"  # "_H" is no code word ("H" is not a hex digit)
_DIGEST_CHARS = 32
# A fixed or escaped segment: allowed characters, no "/", not starting with "." or a
# space, not ending with a space (so never "", "." or "..").
_SEGMENT = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_. -]*[A-Za-z0-9_.-])?")


def _hex_word(char: str) -> str:
    point = ord(char)
    if point < 0x100:
        return f"{_ESCAPE}{point:02X}"
    if point < 0x10000:
        return f"{_ESCAPE}u{point:04X}"
    return f"{_ESCAPE}U{point:06X}"


def escape_segment(value: str) -> str:
    """The MLflow-safe key segment of an arbitrary string (injective, see the module).

    >>> [escape_segment(v) for v in ["F", "<missing>", "a_b", "M/F", " x.", "", "é€"]]
    ['F', '_3Cmissing_3E', 'a__b', 'M_2FF', '_20x.', '_', '_E9_u20AC']
    """
    if not isinstance(value, str):
        raise TypeError(f"escape_segment takes a str. Got {type(value).__name__} instead.")
    if not value:
        return _EMPTY
    last = len(value) - 1
    words = []
    for index, char in enumerate(value):
        if char == _ESCAPE:
            words.append(_ESCAPE * 2)
        elif char in _LITERAL and not (
            (char == " " and index in (0, last)) or (char == "." and index == 0)
        ):
            words.append(char)
        else:
            words.append(_hex_word(char))
    return "".join(words)


def _decode(segment: str) -> str:
    chars = []
    index = 0
    while index < len(segment):
        char = segment[index]
        if char != _ESCAPE:
            if char not in _LITERAL:
                raise ValueError(f"{char!r} at position {index}")
            chars.append(char)
            index += 1
            continue
        marker = segment[index + 1 : index + 2]
        if marker == _ESCAPE:
            chars.append(_ESCAPE)
            index += 2
            continue
        if marker in _WIDTH:
            start, width = index + 2, _WIDTH[marker]
        elif marker in _HEX:
            start, width = index + 1, 2
        else:
            raise ValueError(f"an escape {segment[index : index + 2]!r} at position {index}")
        digits = segment[start : start + width]
        if len(digits) != width or not set(digits) <= _HEX or int(digits, 16) > 0x10FFFF:
            raise ValueError(f"a bad escape {segment[index : start + width]!r}")
        chars.append(chr(int(digits, 16)))
        index = start + width
    return "".join(chars)


def unescape_segment(segment: str) -> str:
    """The string whose `escape_segment` is ``segment``; ValueError if there is none.

    >>> unescape_segment("_3Cmissing_3E")
    '<missing>'
    >>> unescape_segment("a_b")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: The 'segment' parameter ... HINT: it holds an escape '_b' at position 1.
    """
    if segment == _EMPTY:
        return ""
    try:
        value = _decode(segment)
        if escape_segment(value) != segment:
            raise ValueError(
                f"a non-canonical spelling (escape_segment gives {value!r} as "
                f"{escape_segment(value)!r})"
            )
    except ValueError as exc:
        raise ValueError(
            "The 'segment' parameter of unescape_segment must be the output of "
            f"escape_segment. Got {segment!r} instead. HINT: it holds {exc}."
        ) from None
    return value


def join_key(*segments: str) -> str:
    """``privacy_gate/`` + the segments joined by ``/``, each checked to be MLflow-safe.

    Segments are fixed names or outputs of `escape_segment`; the key may be longer than
    `MAX_KEY_LENGTH` (see `metric_key`).

    >>> join_key("tail_count", "0.9")
    'privacy_gate/tail_count/0.9'
    """
    if not segments:
        raise ValueError("join_key needs at least one segment.")
    for segment in segments:
        if not isinstance(segment, str) or not _SEGMENT.fullmatch(segment):
            raise ValueError(
                "The 'segments' parameter of join_key must hold MLflow-safe segments "
                "(characters [A-Za-z0-9_. -], no '/', not starting with '.' or a space, not "
                f"ending with a space). Got {segment!r} instead. HINT: pass user-supplied "
                "text through escape_segment."
            )
    return "/".join((KEY_PREFIX, *segments))


def shorten_key(key: str) -> str:
    """``key`` itself when it fits MLflow's 250 characters, else a deterministic short form.

    The short form is a prefix of ``key`` (trailing ``/`` and spaces removed) plus a last
    segment ``_H`` + 32 hex digits of the SHA-256 of the full key.

    >>> long = join_key("subgroup", "c" * 300, "p_value")
    >>> short = shorten_key(long)
    >>> len(short), is_shortened(short), short == shorten_key(long)
    (250, True, True)
    """
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    tail = f"/{_SHORTENED_MARK}{digest}"
    head = key[: MAX_KEY_LENGTH - len(tail)].rstrip("/ ")  # no "//" and no trailing space
    return head + tail


def metric_key(*segments: str) -> str:
    """The MLflow key of these segments: `join_key`, then `shorten_key`.

    >>> metric_key("patient_auc", "max")
    'privacy_gate/patient_auc/max'
    """
    return shorten_key(join_key(*segments))


def is_shortened(key: str) -> bool:
    """Whether ``key`` is a `shorten_key` short form (its full form is in the map)."""
    last = key.rsplit("/", 1)[-1]
    return (
        last.startswith(_SHORTENED_MARK)
        and len(last) == len(_SHORTENED_MARK) + _DIGEST_CHARS
        and set(last[len(_SHORTENED_MARK) :]) <= set("0123456789abcdef")
    )


def split_key(key: str) -> tuple[str, ...]:
    """The segments of an unshortened key after ``privacy_gate/`` (still escaped).

    >>> split_key("privacy_gate/subgroup/income/_3E_2450k/p_value")
    ('subgroup', 'income', '_3E_2450k', 'p_value')
    """
    head, _, rest = key.partition("/")
    if head != KEY_PREFIX or not rest or is_shortened(key):
        raise ValueError(
            "The 'key' parameter of split_key must be an unshortened privacy-gate key "
            f"('{KEY_PREFIX}/...'). Got {key!r} instead. HINT: look shortened keys up in "
            "the metric_keys_map.json artifact."
        )
    return tuple(rest.split("/"))
