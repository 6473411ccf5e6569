"""The run search language (MLflow's): ``metrics.auc > 0.8 and params.lr = '0.1'`` → SQL.

Terms are joined with AND. A term is ``<field> <op> <value>``: fields are ``metrics.<key>``
(latest value), ``params.<key>``, ``tags.<key>`` or a run attribute (``status``, ``name``,
``run_id``, ``start_time``, ``end_time``, ``duration``, ``git_commit``, ``git_dirty``, optionally
written ``attributes.<name>``); keys with odd characters go in backticks. Ops: = != < <= > >=
LIKE ILIKE IN (...). A param compared with a number compares numerically.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from loopstack.errors import LoopstackError
from loopstack.training.schema import latest_metrics, params, runs, tags

_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<ident>[A-Za-z_]\w*(?:\.(?:`[^`]+`|[\w\-/:.]+))?)
  | (?P<lp>\() | (?P<rp>\)) | (?P<comma>,)
)""", re.X)

ATTRIBUTES = {"run_id": runs.c.run_id, "name": runs.c.name, "run_name": runs.c.name, "status": runs.c.status,
              "start_time": runs.c.start_time, "end_time": runs.c.end_time, "duration": runs.c.duration_s,
              "git_commit": runs.c.git_commit, "git_dirty": runs.c.git_dirty}
_PREFIX = {"metric": "metrics", "metrics": "metrics", "param": "params", "params": "params", "tag": "tags",
           "tags": "tags", "attribute": "attributes", "attributes": "attributes", "attr": "attributes",
           "run": "attributes"}
_OPS = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class SearchError(LoopstackError):
    """A run filter or order-by that cannot be parsed."""


@dataclass(frozen=True)
class Field:
    kind: str  # metrics | params | tags | attributes
    key: str


def parse_field(text: str) -> Field:
    if "." in text:
        prefix, key = text.split(".", 1)
        kind = _PREFIX.get(prefix.lower())
        if kind is None:
            raise SearchError(f"{text!r}: unknown prefix {prefix!r}; use metrics., params., tags. or attributes.")
    else:
        kind, key = "attributes", text
    key = key.strip("`\"")
    if kind == "attributes" and key not in ATTRIBUTES:
        raise SearchError(f"{text!r}: unknown run attribute {key!r}; attributes are {sorted(ATTRIBUTES)} "
                          "(or prefix with metrics., params., tags.)")
    return Field(kind, key)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SearchError(f"cannot parse the filter at {text[pos:pos + 20]!r} (position {pos}) in {text!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _value(kind: str, raw: str) -> Any:
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    if kind == "num":
        f = float(raw)
        return int(f) if re.fullmatch(r"[-+]?\d+", raw) else f
    raise SearchError(f"expected a value (a number or a quoted string), got {raw!r}")


def parse_filter(text: str | None) -> list[tuple[Field, str, Any]]:
    """``a > 1 and b = 'x'`` → [(Field, op, value), ...]."""
    if not text or not text.strip():
        return []
    toks, i, terms = _tokens(text), 0, []
    while i < len(toks):
        if toks[i][0] != "ident":
            raise SearchError(f"expected a field such as metrics.auc, got {toks[i][1]!r} in {text!r}")
        field = parse_field(toks[i][1])
        i += 1
        if i >= len(toks):
            raise SearchError(f"filter {text!r} ends after {field.kind}.{field.key}: add an operator and a value")
        kind, raw = toks[i]
        if kind == "op":
            op = _OPS[raw]
        elif kind == "ident" and raw.upper() in ("LIKE", "ILIKE", "IN"):
            op = raw.upper()
        else:
            raise SearchError(f"expected an operator (= != < <= > >= LIKE ILIKE IN) after {field.key!r}, got {raw!r}")
        i += 1
        if op == "IN":
            if i >= len(toks) or toks[i][0] != "lp":
                raise SearchError("IN needs a parenthesised list, e.g. status IN ('FINISHED', 'FAILED')")
            i, vals = i + 1, []
            while i < len(toks) and toks[i][0] != "rp":
                if toks[i][0] != "comma":
                    vals.append(_value(*toks[i]))
                i += 1
            if i >= len(toks):
                raise SearchError(f"unclosed '(' in {text!r}")
            value: Any = vals
        else:
            if i >= len(toks):
                raise SearchError(f"filter {text!r} ends after an operator: add a value")
            value = _value(*toks[i])
        i += 1
        terms.append((field, op, value))
        if i < len(toks):
            word = toks[i][1].lower()
            if word == "or":
                raise SearchError("OR is not supported (as in MLflow): run two searches, or use IN (...)")
            if word != "and":
                raise SearchError(f"expected AND between terms, got {toks[i][1]!r} in {text!r}")
            i += 1
            if i >= len(toks):
                raise SearchError(f"filter {text!r} ends with AND")
    return terms


def _compare(col: Any, op: str, value: Any) -> Any:
    if op == "IN":
        return col.in_(value)
    if op == "LIKE":
        return col.like(str(value))
    if op == "ILIKE":
        return col.ilike(str(value))
    return {"=": col.__eq__, "!=": col.__ne__, "<": col.__lt__, "<=": col.__le__, ">": col.__gt__,
            ">=": col.__ge__}[op](value)


def _attr_value(key: str, value: Any) -> Any:
    if key in ("start_time", "end_time") and isinstance(value, str):
        from loopstack.training.splits import to_utc
        return int(to_utc(value, key).timestamp() * 1000)
    if key == "git_dirty":
        return str(value).lower() in ("1", "true", "yes")
    return value


def where_clause(terms: list[tuple[Field, str, Any]]) -> list[Any]:
    """SQL conditions on `runs` for parsed terms."""
    conds = []
    for field, op, value in terms:
        numeric = isinstance(value, (int, float)) or (isinstance(value, list) and value
                                                    and all(isinstance(v, (int, float)) for v in value))
        if field.kind == "metrics":
            if not numeric:
                raise SearchError(f"metrics.{field.key} is compared with {value!r}: metrics are numbers")
            t = latest_metrics.alias()
            conds.append(sa.exists().where(t.c.run_id == runs.c.run_id, t.c.key == field.key,
                                           _compare(t.c.value, op, value)))
        elif field.kind == "params":
            t = params.alias()
            col = t.c.value_num if numeric and op not in ("LIKE", "ILIKE") else t.c.value
            v = value if col is t.c.value_num else ([str(x) for x in value] if isinstance(value, list) else str(value))
            conds.append(sa.exists().where(t.c.run_id == runs.c.run_id, t.c.key == field.key, _compare(col, op, v)))
        elif field.kind == "tags":
            t = tags.alias()
            v = [str(x) for x in value] if isinstance(value, list) else str(value)
            conds.append(sa.exists().where(t.c.run_id == runs.c.run_id, t.c.key == field.key,
                                           _compare(t.c.value, op, v)))
        else:
            v = [_attr_value(field.key, x) for x in value] if isinstance(value, list) else _attr_value(field.key, value)
            conds.append(_compare(ATTRIBUTES[field.key], op, v))
    return conds


def order_clause(query: Any, order_by: list[str] | None) -> Any:
    """Add ORDER BY terms ("metrics.auc DESC", "params.lr", "start_time") to a select on `runs`."""
    for n, item in enumerate(order_by or []):
        parts = item.strip().rsplit(None, 1)
        desc = len(parts) == 2 and parts[1].upper() == "DESC"
        name = parts[0] if len(parts) == 2 and parts[1].upper() in ("ASC", "DESC") else item.strip()
        if re.search(r"\s", re.sub(r"`[^`]*`", "", name)):
            raise SearchError(f"order_by {item!r}: write '<field> [ASC|DESC]' (e.g. 'metrics.auc DESC'); "
                              "put a key with spaces in backticks (metrics.`my auc`)")
        field = parse_field(name)
        if field.kind == "attributes":
            cols = [ATTRIBUTES[field.key]]
        else:
            t = {"metrics": latest_metrics, "params": params, "tags": tags}[field.kind].alias(f"o{n}")
            query = query.outerjoin(t, sa.and_(t.c.run_id == runs.c.run_id, t.c.key == field.key))
            cols = [t.c.value_num, t.c.value] if field.kind == "params" else [t.c.value]
        for col in cols:
            query = query.order_by(col.desc().nulls_last() if desc else col.asc().nulls_last())
    return query.order_by(runs.c.start_time.desc(), runs.c.run_id)
