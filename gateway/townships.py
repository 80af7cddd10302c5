"""The registry of Chongqing's districts/counties and townships/streets (config/townships.yaml).

Codes are NBS 统计用区划代码: 6 digits for a district or county, 9 for a township or street.
China's national system sends 12-digit CPEAS codes; `normalise` maps them to 6 or 9 digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gateway.exceptions import ConfigError
from gateway.yamlfile import load_model

_CODE = re.compile(r"\d{6}(\d{3})?(\d{3})?")


class _TownshipRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str = Field(pattern=r"^\d{9}$")
    name: str = Field(min_length=1)


class _DistrictRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str = Field(pattern=r"^\d{6}$")
    name: str = Field(min_length=1)
    townships: list[_TownshipRow]


class _TownshipsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    districts: list[_DistrictRow]


@dataclass(frozen=True)
class Township:
    code: str
    name: str
    district: str


@dataclass(frozen=True)
class District:
    code: str
    name: str
    townships: tuple[str, ...]


def normalise(code: str) -> str | None:
    """A 6- or 9-digit code for `code`, or None when it is not a well-formed code.

    12-digit CPEAS codes: `XXXXXX000000` is a district, `XXXXXXXXX000` a township.
    """
    if not _CODE.fullmatch(code):
        return None
    if len(code) == 12:
        if code.endswith("000000"):
            return code[:6]
        return code[:9] if code.endswith("000") else None
    return code


class Registry:
    """Districts and townships by code; immutable after loading."""

    def __init__(self, districts: Iterable[District], townships: Iterable[Township]) -> None:
        self.districts: dict[str, District] = {d.code: d for d in districts}
        self.townships: dict[str, Township] = {t.code: t for t in townships}

    @classmethod
    def load(cls, path: Path) -> Registry:
        data = load_model(path, _TownshipsFile)
        districts: list[District] = []
        townships: list[Township] = []
        for i, d in enumerate(data.districts):
            for j, t in enumerate(d.townships):
                if not t.code.startswith(d.code):
                    key = f"districts[{i}].townships[{j}].code"
                    raise ConfigError(str(path), key, f"{t.code} is not inside {d.code}")
                townships.append(Township(t.code, t.name, d.code))
            districts.append(District(d.code, d.name, tuple(t.code for t in d.townships)))
        return cls(districts, townships)

    def known(self, code: str) -> bool:
        """True for a known 6-digit district or 9-digit township code."""
        return code in self.districts or code in self.townships

    def district_of(self, code: str) -> str:
        """The district code of a known district or township code."""
        return code[:6]

    def expand(self, codes: Iterable[str]) -> list[str]:
        """The township codes an area covers: a district means all its townships. Sorted."""
        out: set[str] = set()
        for code in codes:
            if code in self.districts:
                out.update(self.districts[code].townships)
            elif code in self.townships:
                out.add(code)
        return sorted(out)

    def name(self, code: str) -> str:
        """The Chinese name of a district or township code, or the code itself."""
        if code in self.townships:
            return self.townships[code].name
        district = self.districts.get(code)
        return district.name if district else code
