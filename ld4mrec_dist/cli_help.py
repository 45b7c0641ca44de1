"""The configuration keys as the command line shows them, read from config.py's dataclasses.

Each field's meaning is the docstring written under it in ld4mrec_dist/config.py (read
here with `ast`, so there is no second copy to keep in step); its type and default come
from the dataclass itself.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from ld4mrec_dist.config import Config


@dataclass(frozen=True)
class ConfigKey:
    key: str  # section.field, as an override writes it
    type: str
    default: Any
    meaning: str  # the first sentence of the field's docstring


@cache
def field_docs(cls: type) -> dict[str, str]:
    """field name -> the docstring under it in the class body (attribute docstrings)."""
    body = ast.parse(inspect.getsource(cls)).body[0]
    assert isinstance(body, ast.ClassDef)
    docs = {}
    for stmt, after in zip(body.body, body.body[1:], strict=False):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def first_sentence(doc: str, width: int = 110) -> str:
    """The docstring's first sentence on one line, cut at a word before `width` characters
    (the rest is in config.py). A sentence ends at a full stop outside brackets that is
    followed by a capital letter or by the end of the text (not `Eq. 3`, not `e.g. x`)."""
    text, depth = " ".join(doc.split()), 0
    end = len(text)
    for i, ch in enumerate(text):
        depth += (ch in "([") - (ch in ")]")
        if ch == "." and depth == 0 and re.match(r"(\s+[A-Z`]|$)", text[i + 1:]):
            end = i
            break
    sentence = text[:end]
    if len(sentence) > width:
        sentence = sentence[:width].rsplit(" ", 1)[0] + " …"
    return sentence


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_keys() -> list[ConfigKey]:
    """Every `section.field` of `Config`, in declaration order."""
    keys: list[ConfigKey] = []
    for section in dataclasses.fields(Config):
        cls: Any = section.default_factory  # each section is a dataclass built by its default factory
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            keys.append(ConfigKey(f"{section.name}.{f.name}", str(f.type), default_of(f),
                                  first_sentence(docs.get(f.name, ""))))
    return keys


def shown(value: Any) -> str:
    """A default as it is written in an override (`""` for the empty string, YAML-like lists)."""
    if value == "":
        return '""'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(shown(v) for v in value) + "]"
    return str(value)


def keys_help() -> str:
    """The key table that `jobs/train.py --help` ends with."""
    keys = config_keys()
    w_key = max(len(k.key) for k in keys)
    w_type = max(len(k.type) for k in keys)
    w_def = max(len(shown(k.default)) for k in keys)
    lines = ["configuration keys (override any with section.field=value; defaults and full "
             "descriptions in ld4mrec_dist/config.py):"]
    section = ""
    for k in keys:
        if k.key.split(".")[0] != section:
            section = k.key.split(".")[0]
            lines.append("")
        lines.append(f"  {k.key:<{w_key}}  {k.type:<{w_type}}  {shown(k.default):<{w_def}}  {k.meaning}")
    return "\n".join(lines)
