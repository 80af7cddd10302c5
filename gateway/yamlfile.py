"""Reading YAML config files into pydantic models, with errors that name file, key and reason."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gateway.exceptions import ConfigError

M = TypeVar("M", bound=BaseModel)


def dotted(loc: tuple[int | str, ...]) -> str:
    """`("clients", "platform", "districts", 0)` → `clients.platform.districts[0]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top)"


def load_yaml(path: Path) -> object:
    """The parsed content of a YAML file; a missing or malformed file is a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "(file)", exc.strerror or str(exc)) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "(syntax)", str(exc).replace("\n", " ")) from exc


def parse_model(path: Path, data: object, model: type[M]) -> M:
    """`data` validated as `model`; the first error becomes a ConfigError naming its key."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        reason = first["msg"] + (f" (and {more} more error(s))" if more else "")
        raise ConfigError(str(path), dotted(tuple(first["loc"])), reason) from exc


def load_model(path: Path, model: type[M]) -> M:
    """Load and validate a YAML file as `model`."""
    return parse_model(path, load_yaml(path), model)
