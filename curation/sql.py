"""Complete validation of the SQL predicates users write (``--where``, workflow filters).

Lance's filter parser stops at the end of the first complete predicate and ignores what follows, so
``speech_ratio > 0.5 AN sharpness > 1000`` silently means ``speech_ratio > 0.5``. Every predicate
is therefore parsed here first, completely, with sqlglot (a real SQL parser): trailing or malformed
text is rejected with one line naming the problem. Only the syntax is checked (column names and
types are Lance's business); the text passed on to Lance is the user's own, unchanged.

Accepted: what Lance's DataFusion-based filters accept and people write: AND/OR/NOT, comparisons,
IN, BETWEEN, IS [NOT] NULL / TRUE / FALSE, [I]LIKE, 'quoted strings' (quote doubled inside),
`backtick` or "double-quoted" names, nested fields (a.b), list indexing (l[1]), function calls
(array_has, array_length, starts_with, lower, regexp_like, date_part, ...), CAST, timestamp '...'
literals and x'hex' literals. Rejected: empty text, trailing tokens, unbalanced parentheses or
quotes, operators with a missing operand, ``;``, comments (``--`` and ``/* */``: the rest of a
line after ``--`` would be silently ignored), nesting deeper than :data:`MAX_DEPTH` parentheses,
sub-queries and bare values that cannot be a condition (``duration_s + 1``, ``5``).

:func:`columns_of` names the columns a predicate reads (workflow filters are checked against the
columns their workflow writes when it loads).
"""
from __future__ import annotations

from functools import lru_cache

import sqlglot
from sqlglot import exp, tokens
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

MAX_SHOWN = 80  # characters of the predicate quoted back in an error message
MAX_DEPTH = 64  # nested parentheses (deeper ones exhaust the parser's recursion)


class InvalidFilter(ValueError):
    """A predicate that does not parse completely; the message is one line."""
    exit_code = 2


class _Lance(Dialect):
    """The quoting rules of Lance filters: 'strings', `names` (and "names", which sqlglot reads as
    names; Lance reads them as strings: either way they are one token), x'hex' literals."""
    class Tokenizer(tokens.Tokenizer):
        QUOTES = ["'"]
        IDENTIFIERS = ["`", '"']
        HEX_STRINGS = [("x'", "'"), ("X'", "'")]


def _shown(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _fail(text: str, problem: str) -> InvalidFilter:
    return InvalidFilter(f"invalid filter {_shown(text)!r}: {problem}")


def _parse_problem(err: ParseError) -> str:
    info = err.errors[0] if err.errors else {}
    desc = info.get("description") or str(err).splitlines()[0]
    token = (info.get("highlight") or "").strip()
    before = " ".join((info.get("start_context") or "").split())
    where = f" after {before!r}" if before else " at the start"
    if desc.startswith("Invalid expression / Unexpected token"):
        return f"unexpected {token!r}{where} (misspelt operator or missing AND/OR?)"
    if desc.startswith("Expecting )"):
        return "missing ')'"
    if desc.startswith("Required keyword"):
        return f"{token!r} is missing an operand{where if token != before else ''}"
    return f"{desc.split(' Line ')[0]}{where}"


@lru_cache(maxsize=4096)
def validate_where(text: str) -> str:
    """Return ``text`` stripped if it is one complete SQL predicate; raise :class:`InvalidFilter`
    (one line: the predicate and what is wrong with it) otherwise."""
    if text is None or not str(text).strip():
        raise InvalidFilter("invalid filter: empty predicate")
    text = str(text).strip()
    dialect = _Lance()
    try:
        toks = dialect.tokenize(text)
    except TokenError as e:
        msg = str(e)
        if "Missing" in msg or "'" in text and text.count("'") % 2:
            raise _fail(text, "unterminated quoted string") from None
        raise _fail(text, msg.splitlines()[0][:120]) from None
    kinds = [t.token_type for t in toks]
    T = tokens.TokenType
    if T.SEMICOLON in kinds:
        raise _fail(text, "';' is not allowed (one predicate only)")
    if any(t.comments for t in toks) or (not toks and ("--" in text or "/*" in text)):
        raise _fail(text, "SQL comments ('--', '/* */') are not allowed (what they hide would be "
                          "ignored)")
    depth = deepest = 0
    for k in kinds:
        depth += (k == T.L_PAREN) - (k == T.R_PAREN)
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        raise _fail(text, f"nested {deepest} parentheses deep (at most {MAX_DEPTH})")
    for a, b in zip(kinds, kinds[1:]):
        if a == T.COMMA and b == T.R_PAREN:
            raise _fail(text, "a ',' with nothing after it before ')'")
    try:
        tree = sqlglot.parse_one(text, into=exp.Condition, dialect=dialect)
    except ParseError as e:
        raise _fail(text, _parse_problem(e)) from None
    except TokenError:
        raise _fail(text, "unterminated quoted string") from None
    except RecursionError:
        raise _fail(text, "too deeply nested") from None
    if tree is None:
        raise _fail(text, "nothing to parse")
    if tree.find(exp.Select, exp.Subquery, exp.Query) is not None:
        raise _fail(text, "sub-queries are not supported")
    if (isinstance(tree, exp.Binary) and not isinstance(tree, (exp.Predicate, exp.Connector))) \
            or isinstance(tree, (exp.Literal, exp.Neg, exp.Tuple)):
        raise _fail(text, f"{tree.sql(dialect=dialect)!r} is a value, not a condition "
                          "(compare it, e.g. '> 0')")
    return text


def parse_where(text: str) -> exp.Expression:
    """The syntax tree of a valid predicate (raises :class:`InvalidFilter` like validate_where)."""
    return sqlglot.parse_one(validate_where(text), into=exp.Condition, dialect=_Lance())


def render(node: exp.Expression) -> str:
    """SQL text of a (sub-)tree of :func:`parse_where`, in the quoting Lance reads."""
    return node.sql(dialect=_Lance())


def columns_of(text: str) -> set[str]:
    """The top-level columns a valid predicate reads (``tags.motion`` reads ``tags``; names in
    double quotes, which Lance reads as strings, are left out)."""
    out = set()
    for col in parse_where(text).find_all(exp.Column):
        root = col.parts[0]
        if not root.quoted or f"`{root.name}`" in text:
            out.add(root.name)
    return out
