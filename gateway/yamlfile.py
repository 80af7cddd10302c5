"""Reading YAML config files into pydantic models, with errors that name file, key and reason."""

from __future__ import annotations

import gc
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode

from gateway.exceptions import ConfigError

M = TypeVar("M", bound=BaseModel)

# libyaml's parser, many times faster than the pure-Python one; absent when PyYAML was built
# without libyaml.
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_PLAIN_TAGS = (None, "!")
_MAP_TAGS = (None, "!", "tag:yaml.org,2002:map")
_SEQ_TAGS = (None, "!", "tag:yaml.org,2002:seq")
_NO_KEY = object()


class _Unusual(Exception):
    """YAML that `_build` leaves to PyYAML's own loader: aliases, merge keys, explicit
    collection tags, unknown tags, unhashable keys, several documents, or an error."""


def dotted(loc: tuple[int | str, ...]) -> str:
    """`("clients", "platform", "districts", 0)` → `clients.platform.districts[0]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top)"


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off inside (and back as it was after): building a large
    tree of acyclic objects (a parsed file, its models) otherwise runs full collections over
    everything built so far, again and again: two thirds of the time a 100,000-endpoint
    file took to load went to the collector."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_text(path: Path) -> str:
    """The text of a config file; a missing or unreadable one is a ConfigError."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "(file)", exc.strerror or str(exc)) from exc


def parse_yaml(path: Path, text: str) -> object:
    """The parsed content of `text`, the content of `path`, as `yaml.safe_load` gives it;
    malformed YAML is a ConfigError worded as `yaml.safe_load` words it."""
    with collector_paused():
        try:
            return _build(text)
        except _Unusual:
            try:
                return yaml.load(text, Loader=_FAST_LOADER)
            except yaml.YAMLError:
                pass
        except yaml.YAMLError:
            pass
    # The error as the pure-Python loader words it, with libyaml or without.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "(syntax)", str(exc).replace("\n", " ")) from exc


def _build(text: str) -> object:
    """The values of a plain YAML document built straight from libyaml's events.

    The same values as `yaml.safe_load` (the same resolver and scalar constructors), without
    its tree of nodes: a 12 MB endpoints.yaml peaks at about a fifth of the memory and parses
    in less than half the time. Raises `_Unusual` for what it leaves to PyYAML.
    """
    loader: Any = _FAST_LOADER(text)
    try:
        _begin(loader)
        get = loader.get_event
        tags: dict[str, str] = {}  # a plain scalar's tag depends on its text alone
        top: list[object] = []
        open_: list[Any] = [top]
        keys: list[object] = [_NO_KEY]  # per open mapping, the key that waits for its value
        while True:
            event = get()
            kind = type(event)
            value: object
            if kind is ScalarEvent:
                value = _scalar(loader, event, tags)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                allowed = _MAP_TAGS if kind is MappingStartEvent else _SEQ_TAGS
                if event.tag not in allowed:
                    raise _Unusual
                open_.append({} if kind is MappingStartEvent else [])
                keys.append(_NO_KEY)
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                value = open_.pop()
                keys.pop()
            elif kind is DocumentEndEvent:
                break
            else:  # an alias: its anchor's value again (an anchor alone changes nothing)
                raise _Unusual
            into = open_[-1]
            if type(into) is list:
                into.append(value)
            elif keys[-1] is _NO_KEY:
                if type(value) is not str and not isinstance(value, Hashable):
                    raise _Unusual
                keys[-1] = value
            else:
                into[keys[-1]] = value
                keys[-1] = _NO_KEY
        if type(get()) is not StreamEndEvent:
            raise _Unusual
        return top[0] if top else None
    finally:
        loader.dispose()


def _begin(loader: Any) -> None:
    """Past the start of the stream and of its one document, or _Unusual."""
    if loader.yaml_path_resolvers:  # a plain scalar's tag would depend on its place
        raise _Unusual
    if type(loader.get_event()) is not StreamStartEvent:
        raise _Unusual
    if type(loader.get_event()) is not DocumentStartEvent:
        raise _Unusual


def _scalar(loader: Any, event: Any, tags: dict[str, str]) -> object:
    """A scalar's value, resolved and constructed as PyYAML's safe loader does; `tags` keeps
    the tags that plain scalars resolved to."""
    tag = event.tag
    if tag in _PLAIN_TAGS:
        if not event.implicit[0]:
            return event.value  # quoted: a string, as `resolve` would say
        tag = tags.get(event.value)
        if tag is None:
            tag = tags[event.value] = loader.resolve(ScalarNode, event.value, event.implicit)
    if tag == _STR:
        return event.value
    construct = loader.yaml_constructors.get(tag)
    if construct is None:  # an unknown tag, or a merge key (`<<`)
        raise _Unusual
    return construct(loader, ScalarNode(tag, event.value, event.start_mark, event.end_mark))


def load_yaml(path: Path) -> object:
    """The parsed content of a YAML file; a missing or malformed file is a ConfigError."""
    return parse_yaml(path, read_text(path))


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
    with collector_paused():
        return parse_model(path, load_yaml(path), model)
