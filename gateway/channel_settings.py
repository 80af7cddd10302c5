"""`channels.<name>` of gateway.yaml: the settings every channel has (`ChannelCommon`) and its
own (its spec's `options`), validated as one model per channel, with the environment
overrides the spec names applied and its `check` run. Errors name file (or variable) and key.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from gateway.channel_registry import Registry
from gateway.channels.spec import ChannelOptions, ChannelSpec, OptionError
from gateway.exceptions import ConfigError
from gateway.flow import DEFAULT_PER_ENDPOINT
from gateway.policies.retry import (
    DEFAULT_ATTEMPTS,
    DEFAULT_INITIAL_S,
    DEFAULT_JITTER_S,
    DEFAULT_MAX_S,
    RetryPolicy,
)
from gateway.yamlfile import parse_model

MAX_CONCURRENCY = 10_000


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    attempts: int = Field(default=DEFAULT_ATTEMPTS, ge=1, le=100)
    initial_s: float = Field(default=DEFAULT_INITIAL_S, gt=0, le=3600)
    max_s: float = Field(default=DEFAULT_MAX_S, gt=0, le=86400)
    jitter_s: float = Field(default=DEFAULT_JITTER_S, ge=0, le=3600)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.attempts, self.initial_s, self.max_s, self.jitter_s)


class ChannelCommon(ChannelOptions):
    """What every channel has; the model of `channels.<name>` adds the spec's options (and
    its default `concurrency`)."""

    enabled: bool = True
    concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY)
    rate_per_s: float = Field(default=0, ge=0, description="0 = unlimited")
    per_endpoint: int = Field(default=DEFAULT_PER_ENDPOINT, ge=1, le=MAX_CONCURRENCY)
    retry: RetrySettings = RetrySettings()


@functools.cache
def settings_model(spec: ChannelSpec[Any]) -> type[ChannelCommon]:
    """The model of `channels.<spec.name>`: an instance is a ChannelCommon and a spec.options."""
    model = create_model(
        f"{spec.name.title()}Settings",
        __base__=(ChannelCommon, spec.options),
        concurrency=(int, Field(default=spec.concurrency, ge=1, le=MAX_CONCURRENCY)),
    )
    return cast(type[ChannelCommon], model)


def channel_settings(
    path: Path, raw: Mapping[str, Any], registry: Registry, env: Mapping[str, str]
) -> dict[str, ChannelCommon]:
    """Every registered channel's settings (enabled or not), from the `channels` section."""
    unknown = [name for name in raw if name not in registry]
    if unknown:
        known = ", ".join(registry)
        raise ConfigError(str(path), f"channels.{unknown[0]}", f"no such channel (known: {known})")
    return {name: _one(path, raw.get(name), spec, env) for name, spec in registry.items()}


def _one(path: Path, raw: object, spec: ChannelSpec[Any], env: Mapping[str, str]) -> ChannelCommon:
    model = settings_model(spec)
    here = f"channels.{spec.name}"
    try:
        settings = parse_model(path, raw, model)
    except ConfigError as exc:
        key = here if exc.key == "(top)" else f"{here}.{exc.key}"
        raise ConfigError(exc.file, key, exc.reason) from exc
    from_env: dict[str, str] = {}
    for key, var in spec.env.items():
        if not env.get(var):
            continue
        try:
            settings = model.model_validate({**settings.model_dump(), key: env[var]})
        except ValidationError as exc:
            raise ConfigError("environment", var, exc.errors()[0]["msg"]) from exc
        from_env[key] = var
    if spec.check is not None:
        try:
            spec.check(spec.options_of(settings))
        except OptionError as exc:
            if exc.key in from_env:
                raise ConfigError("environment", from_env[exc.key], exc.reason) from exc
            raise ConfigError(str(path), f"{here}.{exc.key}", exc.reason) from exc
    return settings
