"""Every limit of the record schemas, and the error that names the field."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from signals.errors import InvalidInput
from signals.schemas import (
    DEFAULT_LIMITS,
    Label,
    Limits,
    Listing,
    Review,
    Signal,
    parse_record,
)

PNG_1PX = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def listing(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "listing_id": "L-1", "seller_id": "S1", "title": "Road bike, 56cm frame",
        "description": "Barely used.", "price": 450.0, "currency": "EUR", "category": "bikes",
        "images": [{"data_b64": PNG_1PX}], "created_at": "2026-11-24T15:00:00Z",
        "tenant": "acme-eu",
    }
    base.update(over)
    return base


def review(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "review_id": "R1", "product_id": "P1", "seller_id": "S1", "reviewer_id": "U1",
        "rating": 5, "text": "Great!", "created_at": "2026-11-24T15:00:00+01:00",
    }
    base.update(over)
    return base


def reject(model: type, data: Any, limits: Limits = DEFAULT_LIMITS) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse_record(model, data, limits)
    return info.value


def test_valid_listing_round_trips() -> None:
    rec = parse_record(Listing, listing())
    assert rec.entity_id == "L-1" and rec.tenant == "acme-eu"
    assert rec.images[0].data is not None and rec.images[0].data.startswith(b"\x89PNG")
    assert rec.text == "Road bike, 56cm frame\nBarely used."


def test_listing_defaults() -> None:
    rec = parse_record(Listing, {"listing_id": "L1", "seller_id": "S1", "title": "x"})
    assert rec.tenant == "default" and rec.images == [] and rec.price is None
    assert rec.text == "x"


@pytest.mark.parametrize(("field", "value"), [
    ("listing_id", ""), ("listing_id", "has space"), ("listing_id", "x" * 129),
    ("listing_id", "-starts-with-dash"), ("listing_id", "ctrl\x01"), ("listing_id", 12),
    ("seller_id", "a/b"), ("seller_id", None),
])
def test_ids_length_and_charset(field: str, value: Any) -> None:
    assert reject(Listing, listing(**{field: value})).field == field


def test_id_at_the_limit_is_fine() -> None:
    assert parse_record(Listing, listing(listing_id="a" * 128)).listing_id == "a" * 128


@pytest.mark.parametrize("tenant", ["", "Acme", "acme eu", "-acme", "a" * 64, "acme/eu"])
def test_tenant_pattern(tenant: str) -> None:
    assert reject(Listing, listing(tenant=tenant)).field == "tenant"


def test_title_limits() -> None:
    assert reject(Listing, listing(title="")).field == "title"
    err = reject(Listing, listing(title="t" * 301))
    assert err.field == "title" and err.code == "too_large"
    assert parse_record(Listing, listing(title="t" * 300))


def test_description_limit() -> None:
    err = reject(Listing, listing(description="d" * 20_001))
    assert err.field == "description" and err.code == "too_large"
    assert reject(Listing, listing(description="nul\x00byte")).field == "description"


def test_limits_can_be_tightened() -> None:
    tight = Limits(max_title_chars=30, max_images=1, max_image_bytes=8)
    assert reject(Listing, listing(title="t" * 31), tight).field == "title"
    err = reject(Listing, listing(images=[{"data_b64": PNG_1PX}] * 2), tight)
    assert err.field == "images" and err.code == "too_large"
    err = reject(Listing, listing(), tight)
    assert err.field == "images[0].data_b64" and err.code == "too_large"


@pytest.mark.parametrize("price", [-0.01, float("inf"), float("nan"), 1e13, "cheap"])
def test_price(price: Any) -> None:
    assert reject(Listing, listing(price=price)).field == "price"


def test_price_zero_is_fine_and_needs_currency() -> None:
    assert parse_record(Listing, listing(price=0)).price == 0
    assert reject(Listing, listing(currency=None)).field == "currency"


@pytest.mark.parametrize("currency", ["eur", "EURO", "E1R", ""])
def test_currency_code(currency: str) -> None:
    assert reject(Listing, listing(currency=currency)).field == "currency"


def test_at_most_ten_images() -> None:
    assert parse_record(Listing, listing(images=[{"data_b64": PNG_1PX}] * 10))
    err = reject(Listing, listing(images=[{"data_b64": PNG_1PX}] * 11))
    assert err.field == "images" and err.code == "too_large"


def test_image_over_10_mib_is_413() -> None:
    big = base64.b64encode(b"\0" * (10 * 1024 * 1024 + 1)).decode()
    err = reject(Listing, listing(images=[{"data_b64": big}]))
    assert err.field == "images[0].data_b64" and err.code == "too_large"


def test_image_exactly_10_mib_is_fine() -> None:
    ok = base64.b64encode(b"\0" * (10 * 1024 * 1024)).decode()
    assert len(parse_record(Listing, listing(images=[{"data_b64": ok}])).images[0].data) == (
        10 * 1024 * 1024)


@pytest.mark.parametrize(("image", "field"), [
    ({}, "images[1]"),
    ({"data_b64": PNG_1PX, "path": "/x.jpg"}, "images[1]"),
    ({"data_b64": "not base64!"}, "images[1].data_b64"),
    ({"data_b64": ""}, "images[1].data_b64"),
    ({"url": "ftp://example.com/a.jpg"}, "images[1].url"),
    ({"url": "javascript:alert(1)"}, "images[1].url"),
    ({"path": ""}, "images[1].path"),
    ({"bytes": "x"}, "images[1].bytes"),
])
def test_image_refs(image: dict[str, Any], field: str) -> None:
    err = reject(Listing, listing(images=[{"data_b64": PNG_1PX}, image]))
    assert err.field == field


def test_image_path_and_url_accepted_by_schema() -> None:
    rec = parse_record(Listing, listing(images=[{"path": "photos/a.jpg"},
                                                {"url": "https://cdn.example.com/a.jpg"}]))
    assert rec.images[0].path == "photos/a.jpg" and rec.images[1].data is None


@pytest.mark.parametrize("ts", ["2026-11-24T15:00:00", "yesterday", "2026-13-01T00:00:00Z"])
def test_timestamps_need_a_zone(ts: str) -> None:
    assert reject(Listing, listing(created_at=ts)).field == "created_at"
    assert reject(Review, review(created_at=ts)).field == "created_at"


def test_unknown_field_is_named() -> None:
    err = reject(Listing, listing(titel="typo"))
    assert err.field == "titel" and "unknown" in err.reason


def test_several_errors_report_the_first_and_count() -> None:
    err = reject(Listing, listing(listing_id="", seller_id=""))
    assert err.field == "listing_id" and "1 more" in err.reason


def test_not_an_object() -> None:
    err = reject(Listing, ["not", "an", "object"])
    assert err.field is None and "JSON object" in err.reason


def test_valid_review() -> None:
    rec = parse_record(Review, review(verified_purchase=True,
                                      reviewer_created_at="2026-01-01T00:00:00Z"))
    assert rec.entity_id == "R1" and rec.rating == 5 and rec.verified_purchase


@pytest.mark.parametrize("rating", [0, 6, 4.5, True, "five", None])
def test_rating_is_1_to_5(rating: Any) -> None:
    assert reject(Review, review(rating=rating)).field == "rating"


def test_rating_from_csv_string() -> None:
    assert parse_record(Review, review(rating="4")).rating == 4


def test_review_requires_created_at_and_ids() -> None:
    data = review()
    del data["created_at"]
    err = reject(Review, data)
    assert err.field == "created_at" and err.code == "missing"
    assert reject(Review, review(reviewer_id="x y")).field == "reviewer_id"
    assert reject(Review, review(text="x" * 20_001)).code == "too_large"


def test_label() -> None:
    lab = parse_record(Label, {"entity_type": "seller", "entity_id": "S1", "label": "fraud"})
    assert lab.label == "fraud"
    assert reject(Label, {"entity_type": "shop", "entity_id": "S1",
                          "label": "fraud"}).field == "entity_type"
    assert reject(Label, {"entity_type": "seller", "entity_id": "S1",
                          "label": "bad"}).field == "label"
    base = {"entity_type": "listing", "entity_id": "L1", "label": "fraud"}
    lab = parse_record(Label, {**base, "loss_amount": 1199.5, "currency": "GBP"})
    assert (lab.loss_amount, lab.currency) == (1199.5, "GBP")
    assert reject(Label, {**base, "loss_amount": 10}).field == "currency"
    assert reject(Label, {**base, "loss_amount": -1, "currency": "GBP"}).field == "loss_amount"
    assert reject(Label, {**base, "loss_amount": float("inf"), "currency": "GBP"}).field == "loss_amount"
    assert reject(Label, {**base, "loss_amount": 1, "currency": "pounds"}).field == "currency"


def test_signal_wire_form() -> None:
    s = Signal(entity_type="listing", entity_id="L1", name="near_duplicate.count", value=3,
               score=0.9, source="listing_near_duplicate@1",
               observed_at=datetime(2026, 11, 24, 15, 0, tzinfo=UTC))
    d = s.to_json_dict()
    assert list(d)[0] == "schema" and d["schema"] == "marketguard.signal/v1"
    assert d["observed_at"] == "2026-11-24T15:00:00Z" and d["shadow"] is False
    assert Signal.model_validate(d).key == s.key == (
        "default", "listing", "L1", "near_duplicate.count", "listing_near_duplicate@1")


@pytest.mark.parametrize(("field", "value"), [
    ("name", "NoNamespace"), ("name", "bad name.x"), ("score", 1.5), ("score", -0.1),
    ("source", "no-version"), ("entity_type", "shop"),
])
def test_signal_rejects(field: str, value: Any) -> None:
    data: dict[str, Any] = {"entity_type": "listing", "entity_id": "L1",
                            "name": "content.obfuscation", "value": 0.5,
                            "source": "content_rules@1"}
    data[field] = value
    with pytest.raises(ValueError):
        Signal.model_validate(data)


def test_invalid_input_survives_pickling_across_processes() -> None:
    import pickle

    from signals.errors import InvalidInput

    err = pickle.loads(pickle.dumps(InvalidInput("items[0].price", "must be >= 0", "too_large")))
    assert (err.field, err.reason, err.code) == ("items[0].price", "must be >= 0", "too_large")
