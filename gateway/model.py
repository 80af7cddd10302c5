"""The warning as the platform sends it (design.md, "Warning"), parsed and validated at the edge.

`parse_warning` reports every field error of a body at once. Semantic checks that need the
registry or the clock (area codes exist, expires_at in the future) run in the same pass through
pydantic's validation context, so they are reported together with the structural ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.exceptions import FieldError, InvalidWarning
from gateway.release_list import Category
from gateway.text import in_utc, no_controls, one_line, unix_newlines, visible
from gateway.townships import Registry, normalise
from gateway.yamlfile import dotted

MAX_ID = 128
MAX_UNIT = 200
MAX_TITLE = 200
MAX_CONTENT = 4000
MAX_TEXT = 2000
MAX_CODES = 2000
DEFAULT_SENT_PAST_S = 3600.0
"""How long before now a new warning's sent_at may lie (`ingest.sent_window_s.past`)."""
DEFAULT_SENT_FUTURE_S = 300.0
"""How far ahead of now a new warning's sent_at may lie (`ingest.sent_window_s.future`)."""
DEFAULT_MAX_VALIDITY_DAYS = 30
"""How long after sent_at a warning may expire (`ingest.max_validity_days`)."""


@dataclass(frozen=True)
class Limits:
    """The time window a new warning must fit (design.md, "Warning": sent_at, expires_at)."""

    sent_past_s: float = DEFAULT_SENT_PAST_S
    sent_future_s: float = DEFAULT_SENT_FUTURE_S
    max_validity_days: int = DEFAULT_MAX_VALIDITY_DAYS

    @property
    def max_validity(self) -> timedelta:
        return timedelta(days=self.max_validity_days)


OneLine = Annotated[str, AfterValidator(one_line)]
Text = Annotated[
    str,
    BeforeValidator(unix_newlines),
    Field(min_length=1, max_length=MAX_TEXT),
    AfterValidator(no_controls),
    AfterValidator(visible),
]
Unit = Annotated[
    str, Field(min_length=1, max_length=MAX_UNIT), AfterValidator(one_line), AfterValidator(visible)
]
Timestamp = Annotated[AwareDatetime, Field(strict=True), AfterValidator(in_utc)]


class MsgType(StrEnum):
    ALERT = "alert"
    UPDATE = "update"
    CANCEL = "cancel"


class Audience(StrEnum):
    PUBLIC = "public"
    RESPONSIBLE_PERSONS = "responsible_persons"


class ChannelName(StrEnum):
    SMS = "sms"
    EMAIL = "email"
    MQTT = "mqtt"
    WEBHOOK = "webhook"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Issuer(_Strict):
    unit: Unit
    role: Unit
    district: str | None = Field(default=None, pattern=r"^\d{6}$")

    @field_validator("district")
    @classmethod
    def _known_district(cls, v: str | None, info: ValidationInfo) -> str | None:
        registry = _registry(info)
        if v is not None and registry is not None and v not in registry.districts:
            raise ValueError(f"unknown district code {v}")
        return v


class JointIssuer(_Strict):
    unit: Unit | None = None
    role: Unit


def _approval_time(v: datetime | None, info: ValidationInfo) -> datetime | None:
    """An approval is not given ahead of now, nor longer ago than a warning may be valid."""
    now, limits = _clock(info)
    if v is None or now is None:
        return v
    if v - now > timedelta(seconds=limits.sent_future_s):
        raise ValueError("lies in the future")
    if now - v > limits.max_validity:
        raise ValueError(f"more than {limits.max_validity_days} days ago")
    return v


class HigherApproval(_Strict):
    unit: Unit
    approved_at: Timestamp
    ref: Unit | None = None

    _approved_at = field_validator("approved_at")(_approval_time)


class Approval(_Strict):
    """Approval is checked by the authority policy: a missing part is a 403, not a 400."""

    approved_by: Annotated[str, Field(max_length=MAX_UNIT), AfterValidator(one_line)] | None = None
    approved_at: Timestamp | None = None
    ref: Unit | None = None
    higher_approval: HigherApproval | None = None

    _approved_at = field_validator("approved_at")(_approval_time)


class Area(_Strict):
    districts: list[str] = Field(default=[], max_length=MAX_CODES)
    townships: list[str] = Field(default=[], max_length=MAX_CODES)
    description: Text | None = None

    @field_validator("districts", "townships")
    @classmethod
    def _codes(cls, codes: list[str], info: ValidationInfo) -> list[str]:
        registry = _registry(info)
        out: list[str] = []
        bad: list[str] = []
        for code in codes:
            norm = normalise(code) if isinstance(code, str) else None
            if norm is None or (info.field_name == "districts" and len(norm) != 6):
                bad.append(f"{code} is not a valid code")
            elif registry is not None and not registry.known(norm):
                bad.append(f"unknown area code {code}")
            elif norm not in out:
                out.append(norm)
        if bad:
            raise ValueError("; ".join(bad))
        return out

    @model_validator(mode="after")
    def _not_empty(self) -> Area:
        if not self.districts and not self.townships:
            raise ValueError("at least one district or township code is required")
        return self

    def codes(self) -> list[str]:
        """Every normalised code of the area, districts first."""
        return [*self.districts, *self.townships]


class Warning(_Strict):
    """One approved warning; immutable once parsed."""

    id: str = Field(min_length=1, max_length=MAX_ID, pattern=r"^[A-Za-z0-9._:-]+$")
    msg_type: MsgType = MsgType.ALERT
    references: str | None = Field(
        default=None, min_length=1, max_length=MAX_ID, pattern=r"^[A-Za-z0-9._:-]+$"
    )
    issuer: Issuer
    joint_issuers: list[JointIssuer] = Field(default=[], max_length=20)
    approval: Approval | None = None
    category: Category
    hazard: Unit
    level: StrictInt = Field(ge=1, le=4)
    title: Annotated[
        str,
        Field(min_length=1, max_length=MAX_TITLE),
        AfterValidator(one_line),
        AfterValidator(visible),
    ]
    content: Annotated[
        str,
        BeforeValidator(unix_newlines),
        Field(min_length=1, max_length=MAX_CONTENT),
        AfterValidator(no_controls),
        AfterValidator(visible),
    ]
    development: Text | None = None
    measures: Text | None = None
    contact_phone: str | None = Field(default=None, max_length=40, pattern=r"^[0-9+()\- ]+$")
    sent_at: Timestamp
    onset_at: Timestamp | None = None
    expires_at: Timestamp
    area: Area
    audience: Audience = Audience.PUBLIC
    channels: list[ChannelName] | None = Field(default=None, min_length=1)
    reason: Text | None = None
    impact: Text | None = None

    @field_validator("joint_issuers", mode="before")
    @classmethod
    def _role_names(cls, v: object) -> object:
        # A bare string names the joint issuer's role (its unit is the role's unit).
        if isinstance(v, list):
            return [{"role": j} if isinstance(j, str) else j for j in v]
        return v

    @field_validator("sent_at")
    @classmethod
    def _in_window(cls, v: datetime, info: ValidationInfo) -> datetime:
        now, limits = _clock(info)
        if now is None:
            return v
        if now - v > timedelta(seconds=limits.sent_past_s):
            raise ValueError(
                f"more than {limits.sent_past_s:g} s before now (ingest.sent_window_s.past)"
            )
        if v - now > timedelta(seconds=limits.sent_future_s):
            raise ValueError(
                f"more than {limits.sent_future_s:g} s ahead of now (ingest.sent_window_s.future)"
            )
        return v

    @field_validator("onset_at")
    @classmethod
    def _onset_near(cls, v: datetime | None, info: ValidationInfo) -> datetime | None:
        now, limits = _clock(info)
        base = info.data.get("sent_at", now)
        if v is not None and isinstance(base, datetime) and base - v > limits.max_validity:
            raise ValueError(f"more than {limits.max_validity_days} days before sent_at")
        return v

    @field_validator("expires_at")
    @classmethod
    def _in_future(cls, v: datetime, info: ValidationInfo) -> datetime:
        now, limits = _clock(info)
        if now is not None and v <= now:
            raise ValueError("must be in the future")
        sent = info.data.get("sent_at")
        if isinstance(sent, datetime) and v <= sent:
            raise ValueError("must be after sent_at")
        # Differences, never sums: sent_at + 30 days can overflow, a difference cannot.
        if isinstance(sent, datetime) and v - sent > limits.max_validity:
            raise ValueError(
                f"more than {limits.max_validity_days} days after sent_at "
                "(ingest.max_validity_days)"
            )
        if sent is None and now is not None and v - now > limits.max_validity:
            raise ValueError(f"more than {limits.max_validity_days} days ahead")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Warning:
        errors: list[str] = []
        if self.onset_at is not None and self.onset_at >= self.expires_at:
            errors.append("onset_at must be before expires_at")
        if self.msg_type is not MsgType.ALERT and self.references is None:
            errors.append(f"references is required for msg_type {self.msg_type}")
        if self.references is not None and self.references == self.id:
            errors.append("references must name another warning")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def joint_roles(self) -> list[str]:
        """The role of every joint issuer."""
        return [j.role for j in self.joint_issuers]


def _clock(info: ValidationInfo) -> tuple[datetime | None, Limits]:
    """The validation context's `now` and `limits` (defaults without a context)."""
    context = info.context or {}
    now, limits = context.get("now"), context.get("limits")
    return (
        now if isinstance(now, datetime) else None,
        limits if isinstance(limits, Limits) else Limits(),
    )


def _registry(info: ValidationInfo) -> Registry | None:
    registry = info.context.get("registry") if info.context else None
    return registry if isinstance(registry, Registry) else None


def _field_errors(exc: ValidationError) -> list[FieldError]:
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            reason = "required"
        elif err["type"] == "extra_forbidden":
            reason = "unknown field"
        out.append(FieldError(dotted(loc) if loc else "(body)", reason))
    return out


def parse_warning(
    raw: bytes | str, *, registry: Registry, now: datetime, limits: Limits | None = None
) -> Warning:
    """The validated warning in a JSON body; raises InvalidWarning listing every field error.
    `now` and `limits` set the window a new warning's times must fit."""
    context = {"registry": registry, "now": now, "limits": limits or Limits()}
    try:
        return Warning.model_validate_json(raw, context=context)
    except ValidationError as exc:
        errors = _field_errors(exc)
        raise InvalidWarning(
            f"the warning has {len(errors)} invalid field(s)", errors=errors
        ) from exc


def as_json_dict(warning: Warning) -> dict[str, Any]:
    """The warning as JSON-ready data, None fields left out."""
    return warning.model_dump(mode="json", exclude_none=True)
