"""Contact values leave the building masked or hashed, per sink; everything else is kept."""

from __future__ import annotations

import json

import pytest

from serving.config import WebhookSinkConfig
from serving.sinks.events import signal_event
from serving.sinks.redaction import keyed_hash, mask, redact_event
from signals.schemas import Signal


def contact_event(phone: str = "+447700900123") -> dict:
    s = Signal(entity_type="listing", entity_id="L1", name="content.offplatform_contact", value=1, score=0.9,
               source="content_rules@2", evidence={"kinds": {"phone": 1}, "matches": [
                   {"kind": "phone", "field": "description", "start": 4, "end": 17, "matched": "07700 900123",
                    "normalized": phone}]})
    return signal_event(s.to_json_dict(), 1)


def test_mask_and_hash_hide_the_value_and_keep_the_rest() -> None:
    ev = contact_event()
    masked = redact_event(ev, "mask")
    m = masked["signal"]["evidence"]["matches"][0]
    assert m["normalized"] == "+4*********23" and m["matched"] == "07********23"
    assert (m["kind"], m["start"], m["end"]) == ("phone", 4, 17) and masked["signal"]["score"] == 0.9
    assert ev["signal"]["evidence"]["matches"][0]["normalized"] == "+447700900123"  # the original untouched
    hashed = redact_event(ev, "hash", "k")["signal"]["evidence"]["matches"][0]
    assert hashed["normalized"] == hashed["matched"] == keyed_hash("+447700900123", "k")
    again = redact_event(contact_event(), "hash", "k")["signal"]["evidence"]["matches"][0]
    assert again["normalized"] == hashed["normalized"]  # the same number: the same token, to correlate
    assert redact_event(ev, "none") is ev
    assert mask("abc") == "***"


def test_other_signals_pass_untouched_and_hash_needs_a_key() -> None:
    s = Signal(entity_type="listing", entity_id="L1", name="content.prohibited_terms", value=1,
               source="content_rules@2", evidence={"matches": [{"term": "replica", "matched": "replica"}]})
    ev = signal_event(s.to_json_dict(), 1)
    assert redact_event(ev, "mask") is ev
    with pytest.raises(ValueError, match="redact_key"):
        redact_event(contact_event(), "hash")
    with pytest.raises(ValueError, match="redact_key"):
        WebhookSinkConfig(url="https://x.example/h", secrets=["s"], redact="hash")
    assert WebhookSinkConfig(url="https://x.example/h", secrets=["s"]).redact == "mask"  # the default


@pytest.mark.parametrize("mode", ["mask", "hash"])
def test_no_contact_value_leaves_in_what_the_content_rules_really_emit(mode: str) -> None:
    from signals.config import ContentRulesConfig
    from signals.content_rules import ContentRulesExtractor
    from signals.schemas import Listing

    values = ["wa.me/447700900123", "t.me/johnsmith99", "7700 900123", "bob.seller@example.com",
              "sketchy-shop.example.net/pay"]
    text = ("Message me on wa.me/447700900123 or t.me/johnsmith99, call +44 7700 900123, "
            "mail bob.seller@example.com or pay at https://sketchy-shop.example.net/pay")
    item = Listing(listing_id="L1", seller_id="s", title="Bike", description=text, price=10, currency="GBP")
    extractor = ContentRulesExtractor(ContentRulesConfig())
    found = extractor.extract_batch([item])[0].signals
    contact = next(s for s in found if s.name == "content.offplatform_contact")
    event = signal_event(contact.to_json_dict(), 1)
    raw = json.dumps(event)
    assert all(v in raw for v in ("johnsmith99", "bob.seller@example.com", "447700900123"))  # found as is
    redacted = json.dumps(redact_event(event, mode, "k"))  # type: ignore[arg-type]
    parts = ["johnsmith99", "447700900123", "bob.seller", "sketchy-shop"]
    leaked = [v for v in values + parts if v in redacted]
    assert not leaked, leaked
    assert '"kind": "handle"' in redacted and '"kind": "email"' in redacted  # what was found is still said
