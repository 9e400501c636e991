from __future__ import annotations

import re
from pathlib import Path

from ams.audit import DESCRIPTIONS, Event

DOCS = Path(__file__).resolve().parents[1] / "docs" / "events.md"


def test_every_event_is_described_in_code() -> None:
    assert set(DESCRIPTIONS) == set(Event)


def test_docs_list_every_event_id_and_name() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = {int(m) for m in re.findall(r"^\|\s*(\d{4})\s*\|", text, flags=re.M)}
    assert documented == {int(e) for e in Event}
    for event in Event:
        assert event.label in text, event


def test_ids_are_stable() -> None:
    assert Event.INSTANCE_CREATED == 1000
    assert Event.RECOVERY_PASSWORD_SET == 1100
    assert Event.API_KEY_CREATED == 1200
