"""Who may issue what: annex 1 (发布清单) enforced on every warning (art. 15, 16, 26, 28).

`authorize` returns an `Authorization` or raises `Refused` with one of the contract's codes:
`not_approved` (art. 15), `issuer_not_authorized`, `level_not_allowed`, `joint_issuer_missing`,
`higher_approval_required`. An issuer with a district code is a district-level unit and may only
warn inside its district. A hazard not in the list may be released temporarily (art. 26) only by a
client allowed to, and is marked for inclusion in the list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.clients import Client
from gateway.exceptions import FieldError, InvalidWarning, Refused
from gateway.model import Warning
from gateway.release_list import (
    DISTRICT_PREFIX,
    ApprovalRule,
    Cell,
    Government,
    ReleaseList,
    Row,
    canonical_unit,
)
from gateway.townships import Registry

_CITY_GOVERNMENT = {"市人民政府", "市政府", "重庆市人民政府", "重庆市政府"}


@dataclass(frozen=True)
class Authorization:
    """Why a warning may go out: the annex-1 row and cell, or a temporary release (art. 26)."""

    government: Government
    row: int | None
    unit: str | None
    temporary: bool = False

    def ledger_data(self) -> dict[str, object]:
        data: dict[str, object] = {"government": self.government.value}
        if self.temporary:
            data |= {"temporary_release": True, "for_filing": "art. 26: include in the list"}
        else:
            data |= {"annex1_row": self.row, "unit": self.unit}
        return data


def government_of(warning: Warning) -> Government:
    return Government.DISTRICT if warning.issuer.district else Government.CITY


def approval_unit_matches(given: str, required: str, district_name: str | None = None) -> bool:
    """Whether the unit that approved (`given`) is the unit annex 1 requires.

    A district-level requirement (`区县（自治县）人民政府`) is met only by the issuer's own
    district (`万州区人民政府`, `重庆市万州区人民政府`); a city unit also goes by its full name
    (`重庆市规划自然资源局`), and the city government by several.
    """
    given, required = canonical_unit(given), canonical_unit(required)
    if required.startswith(DISTRICT_PREFIX):
        if district_name is None:
            return False
        office = required.removeprefix(DISTRICT_PREFIX)
        names = {district_name + office, "重庆市" + district_name + office}
        if office.endswith("人民政府"):
            names |= {n.replace("人民政府", "政府") for n in names}
        return given in names
    if required == "市人民政府":
        return given in _CITY_GOVERNMENT
    return given == required or (required.startswith("市") and given == "重庆" + required)


class AuthorityPolicy:
    """Annex 1 applied to parsed warnings; stateless once built."""

    def __init__(self, release_list: ReleaseList, registry: Registry) -> None:
        self.release_list = release_list
        self.registry = registry

    def authorize(self, warning: Warning, client: Client) -> Authorization:
        """The authorization for `warning` sent by `client`; raises Refused or InvalidWarning."""
        rows = self.release_list.rows_for(warning.hazard)
        if rows and rows[0].category is not warning.category:
            raise InvalidWarning(
                "category does not match the hazard",
                errors=[
                    FieldError(
                        "category",
                        f"{warning.hazard} is {rows[0].category} (annex 1 row {rows[0].row})",
                    )
                ],
            )
        _check_approval(warning)
        government = government_of(warning)
        self._check_district(warning, client)
        if not rows:
            if not client.temporary_release:
                raise Refused(
                    f"{warning.hazard} is not in the release list (annex 1); temporary release "
                    "(art. 26) is not allowed for this client",
                    code="issuer_not_authorized",
                    errors=[FieldError("hazard", "not in the release list")],
                )
            return Authorization(government, None, None, temporary=True)
        refusals: list[Refused] = []
        for row in rows:
            result = self._check_row(warning, row, government)
            if isinstance(result, Authorization):
                return result
            refusals.append(result)
        # Several rows list the hazard: report the refusal of the row that knew the issuer.
        raise min(refusals, key=_specificity)

    def _check_district(self, warning: Warning, client: Client) -> None:
        district = warning.issuer.district
        if client.districts and district not in client.districts:
            raise Refused(
                f"client {client.name} may only send for issuers of districts "
                f"{', '.join(sorted(client.districts))}",
                code="issuer_not_authorized",
                errors=[FieldError("issuer.district", "not allowed for this client")],
            )
        if district is None:
            return
        outside = [c for c in warning.area.codes() if self.registry.district_of(c) != district]
        if outside:
            raise Refused(
                f"a district-level issuer of {district} may only warn inside its district",
                code="issuer_not_authorized",
                errors=[FieldError("area", f"outside {district}: {', '.join(outside)}")],
            )

    def _check_row(
        self, warning: Warning, row: Row, government: Government
    ) -> Authorization | Refused:
        cell = row.cell(government)
        unit = cell.unit_for(warning.issuer.role) if cell else None
        if cell is None or unit is None:
            return _not_authorized(warning, row, government)
        if warning.level not in row.levels or warning.level not in cell.levels:
            return Refused(
                f"{unit} may issue {warning.hazard} at levels "
                f"{_levels(cell.levels)} (annex 1 row {row.row})",
                code="level_not_allowed",
                errors=[FieldError("level", f"{warning.level} not allowed for {unit}")],
            )
        if cell.joint:
            missing = _missing_joint(warning, cell, unit)
            if missing:
                return Refused(
                    f"{warning.hazard} is issued jointly (联合发布, annex 1 row {row.row}); "
                    f"missing: {', '.join(missing)}",
                    code="joint_issuer_missing",
                    errors=[FieldError("joint_issuers", f"missing {m}") for m in missing],
                )
        district = warning.issuer.district
        district_name = self.registry.name(district) if district else None
        for rule in cell.higher_approval:
            refusal = _check_higher_approval(warning, row, rule, district_name)
            if refusal is not None:
                return refusal
        return Authorization(government, row.row, unit)


def check_issuing_unit(
    warning: Warning,
    authorization: Authorization,
    referenced: Mapping[str, Any],
    referenced_authorization: Mapping[str, Any],
    client: Client,
) -> None:
    """Art. 18: an update or cancel comes from the issuing unit of the warning it replaces
    (`referenced`, as stored), or from the city-level unit of the same annex-1 row for a
    district warning, through a client allowed for every district of the referenced area.
    Refused `not_issuing_unit` otherwise; `authorization` is the new message's own."""
    area = referenced.get("area", {})
    districts = {*area.get("districts", ()), *(t[:6] for t in area.get("townships", ()))}
    denied = sorted(d for d in districts if not client.allows_district(d))
    if denied:
        raise Refused(
            f"client {client.name} may not act on warning {referenced.get('id')} "
            f"of districts {', '.join(denied)} (art. 18)",
            code="not_issuing_unit",
            errors=[FieldError("references", f"districts {', '.join(denied)} not allowed")],
        )
    old = referenced.get("issuer", {})
    new = warning.issuer
    same_row = referenced_authorization.get("annex1_row") == authorization.row
    same_unit = (
        new.unit == old.get("unit")
        and new.district == old.get("district")
        and (
            new.role == old.get("role")
            # the same annex-1 unit spelt another way (区县气象主管机构, 区县（自治县）...)
            or (
                authorization.unit is not None
                and authorization.unit == referenced_authorization.get("unit")
            )
        )
    )
    city_over_district = (
        old.get("district") is not None
        and new.district is None
        and not authorization.temporary
        and same_row
    )
    if not (same_unit or city_over_district):
        raise Refused(
            f"only the issuing unit of warning {referenced.get('id')} "
            f"({old.get('unit')}, {old.get('role')}"
            + (f", {old['district']}" if old.get("district") else "")
            + ") or the city-level unit of its role may update or cancel it (art. 18)",
            code="not_issuing_unit",
            errors=[FieldError("issuer", "not the issuing unit of the referenced warning")],
        )


def _check_approval(warning: Warning) -> None:
    approval = warning.approval
    if approval is None or not approval.approved_by or approval.approved_at is None:
        raise Refused(
            "the warning carries no approval (art. 15: 未按照规定审批的预警信息，不得发布)",
            code="not_approved",
            errors=[FieldError("approval", "approved_by and approved_at are required")],
        )
    if approval.approved_at > warning.sent_at:
        raise Refused(
            "the warning was sent before it was approved (art. 15)",
            code="not_approved",
            errors=[FieldError("approval.approved_at", "after sent_at")],
        )


def _check_higher_approval(
    warning: Warning, row: Row, rule: ApprovalRule, district_name: str | None
) -> Refused | None:
    if warning.level not in rule.levels or rule.condition is not None:
        return None
    higher = warning.approval.higher_approval if warning.approval else None
    if higher is not None and approval_unit_matches(higher.unit, rule.unit, district_name):
        if higher.approved_at <= warning.sent_at:
            return None
        reason = "approved after sent_at"
    else:
        reason = f"approval by {rule.unit} is required"
    return Refused(
        f"level {warning.level} {warning.hazard} needs approval by {rule.unit} "
        f"(annex 1 row {row.row}, art. 15)",
        code="higher_approval_required",
        errors=[FieldError("approval.higher_approval", reason)],
    )


def _missing_joint(warning: Warning, cell: Cell, unit: str) -> list[str]:
    present = {unit} | {u for r in warning.joint_roles() if (u := cell.unit_for(r))}
    return [u for u in cell.units if u not in present]


def _not_authorized(warning: Warning, row: Row, government: Government) -> Refused:
    cell = row.cell(government)
    if cell is None:
        other = "city" if government is Government.DISTRICT else "district"
        why = f"annex 1 row {row.row} names only {other}-level units"
    else:
        why = f"annex 1 row {row.row} lists {', '.join(cell.units)}"
    if government is Government.CITY and warning.issuer.role.startswith(("区县", DISTRICT_PREFIX)):
        why += "; a district-level role needs issuer.district"
    return Refused(
        f"{warning.issuer.role} may not issue {warning.hazard} at {government.value} level ({why})",
        code="issuer_not_authorized",
        errors=[FieldError("issuer.role", why)],
    )


def _levels(levels: frozenset[int]) -> str:
    return ", ".join(str(level) for level in sorted(levels))


def _specificity(refusal: Refused) -> int:
    order = ["higher_approval_required", "joint_issuer_missing", "level_not_allowed"]
    return order.index(refusal.code) if refusal.code in order else len(order)
