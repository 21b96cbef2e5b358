"""Is this SQL one reading statement? The check every read-only door of the store applies.

``readonly=1`` makes ClickHouse refuse writes and setting changes, but two things pass it in the
embedded engine: ``INTO OUTFILE`` (a server leaves the file to its client; chDB, being the
client, writes it) and a second statement after ``;``. So the text is lexed (strings, quoted
names and comments set aside, where a ``;`` or ``OUTFILE`` is only data) and must be one
statement starting with a reading keyword, with no ``INTO OUTFILE``. The query CLI, the API and
the store share all ask :func:`reading_statement`, so the rule holds on the port itself, not only
in the clients.
"""

from __future__ import annotations

import re

_READING = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class NotReadingError(ValueError):
    """The SQL is not exactly one reading statement; ``str(err)`` says why."""


def _code_only(sql: str) -> str:
    """``sql`` with string literals and quoted identifiers masked (``x`` for each character) and
    comments blanked (spaces), so that positions still match ``sql``."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            j = i + 1
            while True:
                if j >= n:
                    raise NotReadingError(f"unterminated {c} quote")
                if sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # a doubled quote inside
                        j += 2
                        continue
                    break
                j += 1
            out.append("x" * (min(j, n - 1) + 1 - i))
            i = j + 1
        elif sql.startswith("--", i) or c == "#":
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif sql.startswith("/*", i):
            depth, j = 1, i + 2  # ClickHouse nests block comments
            while depth:
                if j >= n:
                    raise NotReadingError("unterminated /* comment")
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def reading_statement(sql: str) -> str:
    """``sql`` as one reading statement (a trailing ``;`` removed), or :class:`NotReadingError`."""
    code = _code_only(sql)
    body = code.rstrip().rstrip(";")
    if ";" in body:
        raise NotReadingError("one statement at a time (found ';' between statements)")
    words = [w.upper() for w in _WORD.findall(body)]
    if not words or words[0] not in _READING:
        raise NotReadingError("only reading statements (SELECT, WITH, SHOW, DESCRIBE, EXISTS, EXPLAIN) are accepted")
    if any(a == "INTO" and b == "OUTFILE" for a, b in zip(words, words[1:])):
        raise NotReadingError("INTO OUTFILE is not accepted: the store is read-only")
    trimmed = code.rstrip()
    if trimmed.endswith(";"):
        trimmed = trimmed[:-1].rstrip()
    return sql[: len(trimmed)]
