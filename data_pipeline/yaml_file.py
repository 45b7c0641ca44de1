"""YAML text parsed the way OmegaConf parses it, with a syntax error named by file and line.

OmegaConf hands PyYAML's own exception through, which names `<unicode string>` and spans
several lines; `load_yaml` turns it into one line: "<file>, line L, column C: <problem>".
Used for `--config` files (ld4mrec_dist/config.py) and sweep files (ld4mrec_dist/tune).
"""

from __future__ import annotations

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from data_pipeline.errors import DataError


def load_yaml(text: str | bytes, where: str, error: type[Exception] = DataError) -> DictConfig | ListConfig:
    """`OmegaConf.create(text)`; `error(...)` with `where`, line and column on a YAML syntax error
    (or, for bytes, on text that is not UTF-8)."""
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise error(f"{where}, line {line}: not UTF-8 text (byte {data[err.start]:#04x}); save it as UTF-8") \
                from None
    try:
        return OmegaConf.create(text)
    except yaml.YAMLError as err:
        raise error(yaml_error_message(err, where)) from None


def read_yaml_file(path: str, error: type[Exception] = DataError) -> DictConfig | ListConfig:
    """A local YAML file parsed with `load_yaml`; `error(...)` when unreadable or not UTF-8."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror})") from None
    return load_yaml(data, path, error)


def yaml_error_message(err: yaml.YAMLError, where: str) -> str:
    """One line: where, the 1-based line and column of the problem, what PyYAML found, the fix."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
        context = f"{context} started at line {context_mark.line + 1}"
    detail = f"{problem} ({context})" if context else problem
    return f"{where}{at}: invalid YAML: {detail}; fix the syntax there"
