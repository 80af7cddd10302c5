"""Annex 1 (发布清单) as typed data, loaded from config/release_list.yaml.

The file's header documents each key. A hazard determines its category; a hazard may appear in
several rows (干旱 is issued by water authorities and by the weather service).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.exceptions import ConfigError
from gateway.yamlfile import load_model

ALL_LEVELS = (1, 2, 3, 4)
DISTRICT_PREFIX = "区县（自治县）"


class Category(StrEnum):
    NATURAL_DISASTER = "natural_disaster"
    ACCIDENT_DISASTER = "accident_disaster"
    PUBLIC_HEALTH = "public_health"
    SOCIAL_SAFETY = "social_safety"


class Government(StrEnum):
    """The level of government an issuer belongs to."""

    CITY = "city"
    DISTRICT = "district"


Level = int


class _ApprovalRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    levels: list[Level] = Field(min_length=1)
    unit: str = Field(min_length=1)
    condition: str | None = None


class _Cell(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    units: list[str] = Field(min_length=1)
    aliases: dict[str, str] = {}
    joint: bool = False
    levels: list[Level] | None = None
    higher_approval: list[_ApprovalRule] = []
    remark: str | None = None

    @model_validator(mode="after")
    def _aliases_name_units(self) -> _Cell:
        for alias, unit in self.aliases.items():
            if unit not in self.units:
                raise ValueError(f"alias {alias!r} names {unit!r}, which is not among units")
        return self


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    row: int = Field(ge=1)
    category: Category
    listed_as: str
    hazards: list[str] = Field(min_length=1)
    levels: list[Level] = list(ALL_LEVELS)
    city: _Cell | None = None
    district: _Cell | None = None


class _ReleaseListFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    rows: list[_Row] = Field(min_length=1)


def canonical_unit(name: str) -> str:
    """A unit/role name in one spelling: trimmed, ASCII parentheses made full-width."""
    return name.strip().replace("(", "（").replace(")", "）")


def bare_unit(name: str) -> str:
    """A district-level role without its 区县（自治县） prefix, for lenient matching."""
    name = canonical_unit(name)
    for prefix in (DISTRICT_PREFIX, "区县", "区（县）"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


@dataclass(frozen=True)
class ApprovalRule:
    """Levels that need approval by `unit` beyond the issuer's own (art. 15).

    A rule with a `condition` applies only in a case the warning cannot show; it is kept for the
    record and not enforced.
    """

    levels: frozenset[Level]
    unit: str
    condition: str | None


@dataclass(frozen=True)
class Cell:
    """The units of one level of government for one row of annex 1."""

    government: Government
    units: tuple[str, ...]
    aliases: dict[str, str]
    joint: bool
    levels: frozenset[Level]
    higher_approval: tuple[ApprovalRule, ...]
    remark: str | None

    def unit_for(self, role: str) -> str | None:
        """The listed unit a role name stands for, or None when it is not one of this cell's."""
        role = canonical_unit(role)
        role = self.aliases.get(role, role)
        if role in self.units:
            return role
        if self.government is Government.DISTRICT:
            bare = bare_unit(role)
            for unit in self.units:
                if bare_unit(unit) == bare:
                    return unit
            for alias, unit in self.aliases.items():
                if bare_unit(alias) == bare:
                    return unit
        return None


@dataclass(frozen=True)
class Row:
    """One row of annex 1."""

    row: int
    category: Category
    listed_as: str
    hazards: tuple[str, ...]
    levels: frozenset[Level]
    city: Cell | None
    district: Cell | None

    def cell(self, government: Government) -> Cell | None:
        return self.city if government is Government.CITY else self.district


class ReleaseList:
    """Annex 1 indexed by hazard name."""

    def __init__(self, source: str, rows: list[Row]) -> None:
        self.source = source
        self.rows = rows
        self._by_hazard: dict[str, list[Row]] = {}
        for row in rows:
            for hazard in row.hazards:
                self._by_hazard.setdefault(hazard, []).append(row)

    def rows_for(self, hazard: str) -> list[Row]:
        """The rows that list `hazard`, in annex order; empty when it is not listed."""
        return self._by_hazard.get(hazard.strip(), [])

    def category_of(self, hazard: str) -> Category | None:
        rows = self.rows_for(hazard)
        return rows[0].category if rows else None

    @classmethod
    def load(cls, path: Path) -> ReleaseList:
        data = load_model(path, _ReleaseListFile)
        rows = [_row(path, i, r) for i, r in enumerate(data.rows)]
        seen: dict[str, Category] = {}
        for i, row in enumerate(rows):
            for hazard in row.hazards:
                if seen.setdefault(hazard, row.category) is not row.category:
                    key = f"rows[{i}].hazards"
                    raise ConfigError(str(path), key, f"{hazard} is listed in two categories")
        return cls(data.source, rows)


def _row(path: Path, index: int, r: _Row) -> Row:
    levels = frozenset(r.levels)
    if not levels <= set(ALL_LEVELS):
        raise ConfigError(str(path), f"rows[{index}].levels", "levels are 1-4")
    if r.city is None and r.district is None:
        raise ConfigError(str(path), f"rows[{index}]", "a row needs a city or district cell")
    return Row(
        row=r.row,
        category=r.category,
        listed_as=r.listed_as,
        hazards=tuple(h.strip() for h in r.hazards),
        levels=levels,
        city=_cell(path, f"rows[{index}].city", Government.CITY, r.city, levels),
        district=_cell(path, f"rows[{index}].district", Government.DISTRICT, r.district, levels),
    )


def _cell(
    path: Path, key: str, government: Government, c: _Cell | None, row_levels: frozenset[Level]
) -> Cell | None:
    if c is None:
        return None
    levels = frozenset(c.levels) if c.levels is not None else row_levels
    if not levels <= row_levels:
        raise ConfigError(str(path), f"{key}.levels", "outside the hazard's levels")
    return Cell(
        government=government,
        units=tuple(canonical_unit(u) for u in c.units),
        aliases={canonical_unit(a): canonical_unit(u) for a, u in c.aliases.items()},
        joint=c.joint,
        levels=levels,
        higher_approval=tuple(
            ApprovalRule(frozenset(a.levels), canonical_unit(a.unit), a.condition)
            for a in c.higher_approval
        ),
        remark=c.remark,
    )
