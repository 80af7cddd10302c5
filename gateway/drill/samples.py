"""Sample warnings for `gateway drill` and the documentation."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

WANZHOU = "500101"


def red_rainstorm_wanzhou(now: datetime, warning_id: str) -> dict[str, Any]:
    """A level-1 (red) 暴雨 warning for all of 万州区, issued by its weather service."""
    sent = now - timedelta(seconds=5)
    return {
        "id": warning_id,
        "msg_type": "alert",
        "issuer": {
            "unit": "万州区气象局",
            "role": "区县（自治县）气象主管机构",
            "district": WANZHOU,
        },
        "approval": {
            "approved_by": "万州区气象局值班领导",
            "approved_at": (sent - timedelta(minutes=2)).isoformat(),
            "ref": "万气预〔2026〕1号",
        },
        "category": "natural_disaster",
        "hazard": "暴雨",
        "level": 1,
        "title": "万州区气象局发布暴雨红色预警信号",
        "content": "预计未来3小时内万州区大部地区降雨量将达100毫米以上，请注意防范山洪、地质灾害。",
        "measures": "停止集会、停课、停业（除特殊行业外）；"
        "做好山洪、滑坡、泥石流等灾害的防御工作。",
        "contact_phone": "023-12121",
        "sent_at": sent.isoformat(),
        "onset_at": sent.isoformat(),
        "expires_at": (sent + timedelta(hours=6)).isoformat(),
        "area": {"districts": [WANZHOU], "description": "万州区全境"},
        "audience": "public",
        "reason": "强降雨",
        "impact": "可能引发山洪、滑坡、城市内涝，影响交通和户外作业。",
    }
