"""The HTTP API through one real Ray Serve instance (the session's ``serve_app``), as a client meets it:
every route and error code, keys and tenants, idempotent re-posts, partner updates, deletes, an
undecodable image among good ones, a mixed ``items`` batch."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.serving.api.helpers import listing, photo_b64, review, signal
from tests.serving.conftest import Service, postgres_service

_ids = itertools.count()
# acme's indexes live in its catalogue shard; globex's are split over the session's two index shards
TENANTS = ["acme", "globex"]


def uid(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def serve_app(request: pytest.FixtureRequest, serve_app: Service,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Every test here runs against the session's service (SQLite store), then against the same
    service with its store on PostgreSQL (a second app beside it)."""
    if request.param == "sqlite":
        yield serve_app
        return
    yield from postgres_service(serve_app, request.getfixturevalue("postgres"),
                                tmp_path_factory.mktemp("serve-pg") / "state")


@pytest.fixture(scope="module")
def http(serve_app: Service) -> httpx.Client:
    return httpx.Client(base_url=serve_app.base, timeout=120)


def post(http: httpx.Client, svc: Service, path: str, body: Any, tenant: str = "acme") -> httpx.Response:
    return http.post(path, json=body, headers=svc.headers(tenant))


def get(http: httpx.Client, svc: Service, path: str, tenant: str = "acme") -> httpx.Response:
    return http.get(path, headers=svc.headers(tenant))


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    return dict(body["error"])


def test_health_ready_openapi_and_metrics(http: httpx.Client, serve_app: Service) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json()["status"] == "ready"
    spec = http.get("/openapi.json").json()
    assert {"/v1/listings", "/v1/reviews", "/v1/labels", "/v1/entities/{entity_type}/{entity_id}/signals",
            "/v1/banks/{bank}/items"} <= set(spec["paths"])
    post(http, serve_app, "/v1/listings", listing(uid("Lm"), "s1", title=4, image=None))
    text = http.get("/metrics").text
    assert 'marketguard_request_seconds_bucket{le="0.005",method="POST",route="/v1/listings"' in text
    assert "marketguard_index_items{" in text
    assert 'marketguard_batch_size_count{batch="extract"}' in text  # the @serve.batch calls
    assert 'marketguard_signals_written_total{kind="listing"}' in text
    post(http, serve_app, "/v1/listings", listing(uid("Lm"), "s1", title=4, image=None), tenant="globex")
    text = http.get("/metrics").text  # a split tenant's index sizes come from its catalogue shard too
    assert 'marketguard_index_items{modality="listing_text",tenant="globex"}' in text


def test_every_signal_written_is_published_signed_to_the_webhook(http: httpx.Client,
                                                                  serve_app: Service) -> None:
    import json
    import time

    from serving.sinks.webhook import SIGNATURE_HEADER, verify_signature

    a = uid("Lpub")
    body = listing(a, "seller-pub", title=6, image=61)
    body["description"] = "Text me on +44 7700 900123 for a better price"
    r = post(http, serve_app, "/v1/listings", body)
    written = {(s["name"], s["source"]) for s in r.json()["signals"]}
    contact = signal(r.json(), "content.offplatform_contact")
    assert contact["evidence"]["matches"][0]["normalized"] == "+447700900123"  # the caller sees it
    deadline = time.monotonic() + 30
    def published() -> set[tuple[str, str]]:
        return {(e["signal"]["name"], e["signal"]["source"]) for e in serve_app.hook.events()
                if e["entity_id"] == a and e["type"] == "signal"}

    while not published() >= written and time.monotonic() < deadline:
        time.sleep(0.1)
    assert published() >= written
    mine = [e for e in serve_app.hook.events() if e["entity_id"] == a]
    assert all(e["tenant"] == "acme" and e["seq"] >= 1 for e in mine)
    published = next(e["signal"] for e in mine if e["signal"]["name"] == "content.offplatform_contact")
    assert published["evidence"]["matches"][0]["normalized"] == "+4*********23"  # masked for the webhook
    photo = body["images"][0]["data_b64"]
    assert not any(photo[:64].encode() in b for _, b in serve_app.hook.got)  # image bytes never leave
    for headers, body in list(serve_app.hook.got):
        assert verify_signature(body, headers[SIGNATURE_HEADER], ["test-secret"])
        assert json.loads(body)["delivery_id"] == headers["Idempotency-Key"]
    text = http.get("/metrics").text
    assert "marketguard_sink_delivered_events_total{sink=\"webhook:" in text
    assert "marketguard_sink_lag_seconds{sink=\"webhook:" in text


def test_deep_signals_arrive_after_the_answer(http: httpx.Client, serve_app: Service) -> None:
    """OCR reads a phone number off the photo after the listing was answered; the deep tier's
    signals are stored, served and published like any other."""
    import time

    from tests.serving.api.helpers import text_photo_b64

    a = uid("Ldeep")
    photo = text_photo_b64("Call +44 7700 900123")
    body = listing(a, "seller-deep", title=7, image=None, images=[{"data_b64": photo}])
    r = post(http, serve_app, "/v1/listings", body)
    assert r.status_code == 200
    assert r.json()["pending"] == ["content.offplatform_contact@image_ocr", "image.nsfw"]
    assert not any(s["source"].startswith("image_ocr@") for s in r.json()["signals"])
    deadline = time.monotonic() + 180  # OCR runs at low priority beside the rest of the suite
    while time.monotonic() < deadline:
        stored = get(http, serve_app, f"/v1/entities/listing/{a}/signals").json()["signals"]
        if {"image_ocr", "image_nsfw"} <= {s["source"].split("@")[0] for s in stored}:
            break
        time.sleep(0.5)
    ocr = next(s for s in stored if s["source"].startswith("image_ocr@"))
    assert ocr["name"] == "content.offplatform_contact" and ocr["value"] == 1
    assert any(s["name"] == "image.nsfw" for s in stored)
    deadline = time.monotonic() + 30
    while not any(e["entity_id"] == a and e["signal"]["source"].startswith("image_ocr@")
                  for e in serve_app.hook.events() if e["type"] == "signal"):
        assert time.monotonic() < deadline, "the deep signal was not published"
        time.sleep(0.1)
    assert "marketguard_deep_queued_jobs" in http.get("/metrics").text


@pytest.mark.parametrize("tenant", TENANTS)
def test_a_copy_from_another_seller_matches_and_the_original_learns_of_it(
        http: httpx.Client, serve_app: Service, tenant: str) -> None:
    a, b = uid("La"), uid("Lb")
    r = post(http, serve_app, "/v1/listings", listing(a, "seller-a", image=11), tenant=tenant)
    assert r.status_code == 200 and r.json()["listing_id"] == a
    assert r.json()["pending"] == ["content.offplatform_contact@image_ocr", "image.nsfw"]  # its photo's
    assert signal(r.json(), "near_duplicate.count")["value"] == 0
    r = post(http, serve_app, "/v1/listings", listing(b, "seller-b", image=11), tenant=tenant)
    cross = signal(r.json(), "near_duplicate.cross_seller_count")
    assert cross["value"] == 1 and {m["id"] for m in cross["evidence"]["matches"]} == {a}
    assert signal(r.json(), "image.reused_across_sellers")["value"] == 1
    older = get(http, serve_app, f"/v1/entities/listing/{a}/signals", tenant).json()
    assert {m["id"] for m in signal(older, "near_duplicate.count")["evidence"]["matches"]} == {b}
    assert signal(older, "near_duplicate.cluster_size")["value"] == 2
    seller = get(http, serve_app, "/v1/entities/seller/seller-b/signals", tenant).json()
    assert signal(seller, "seller.duplicate_listing_ratio")["value"] == 1.0
    hist = get(http, serve_app, f"/v1/entities/listing/{a}/signals?history=true", tenant).json()["history"]
    counts = [h["value"] for h in hist if h["name"] == "near_duplicate.count"]
    assert counts == [0, 1]  # every value kept, in order


@pytest.mark.parametrize("tenant", TENANTS)
def test_reposting_an_id_replaces_it_and_never_counts_twice(http: httpx.Client, serve_app: Service,
                                                            tenant: str) -> None:
    a = uid("Lr")
    for _ in range(3):
        r = post(http, serve_app, "/v1/listings", listing(a, "seller-rp", title=2, image=21), tenant=tenant)
        assert r.status_code == 200
    seller = get(http, serve_app, "/v1/entities/seller/seller-rp/signals", tenant).json()
    assert signal(seller, "seller.duplicate_listing_ratio")["evidence"]["listings"] == 1
    assert signal(get(http, serve_app, f"/v1/entities/listing/{a}/signals", tenant).json(),
                  "near_duplicate.count")["value"] == 0  # never its own near-duplicate


@pytest.mark.parametrize("tenant", TENANTS)
def test_delete_takes_a_listing_down_and_updates_its_partners(http: httpx.Client, serve_app: Service,
                                                              tenant: str) -> None:
    a, b = uid("Ld"), uid("Ld")
    post(http, serve_app, "/v1/listings", listing(a, "seller-d1", title=3, image=31), tenant=tenant)
    post(http, serve_app, "/v1/listings", listing(b, "seller-d2", title=3, image=31), tenant=tenant)
    r = http.delete(f"/v1/listings/{a}", headers=serve_app.headers(tenant))
    assert r.status_code == 200 and r.json() == {"listing_id": a, "deleted": True}
    partner = get(http, serve_app, f"/v1/entities/listing/{b}/signals", tenant).json()
    assert signal(partner, "near_duplicate.count")["value"] == 0
    assert signal(partner, "near_duplicate.cluster_size")["value"] == 1
    gone = get(http, serve_app, f"/v1/entities/listing/{a}/signals?history=true", tenant).json()
    assert gone["signals"] == [] and "deleted_at" in gone and gone["history"]  # history kept, tombstoned
    again = http.delete(f"/v1/listings/{a}", headers=serve_app.headers(tenant))
    assert error_of(again)["code"] == "not_found"
    c = uid("Ld")  # a later copy no longer matches the deleted listing
    r = post(http, serve_app, "/v1/listings", listing(c, "seller-d3", title=3, image=31), tenant=tenant)
    assert {m["id"] for m in signal(r.json(), "near_duplicate.count")["evidence"]["matches"]} == {b}


def test_an_undecodable_image_among_good_ones_is_named_and_the_good_one_still_matches(
        http: httpx.Client, serve_app: Service) -> None:
    a, b = uid("Li"), uid("Li")
    post(http, serve_app, "/v1/listings", listing(a, "seller-i1", title=1, image=41))
    body = listing(b, "seller-i2", title=1, image=None,
                   images=[{"data_b64": "aGVsbG8gd29ybGQ="}, {"data_b64": photo_b64(41)}])
    r = post(http, serve_app, "/v1/listings", body)
    assert r.status_code == 200
    reuse = signal(r.json(), "image.reused_across_sellers")
    assert reuse["value"] == 1
    assert reuse["evidence"]["unreadable_images"][0]["field"] == "images[0]"


def test_a_mixed_items_batch_answers_each_item(http: httpx.Client, serve_app: Service) -> None:
    good, bad = uid("Lx"), uid("Lx")
    r = post(http, serve_app, "/v1/listings", {"items": [
        listing(good, "seller-x", title=8, image=None),
        {"listing_id": bad, "seller_id": "s", "title": "t", "price": "x"},
        {"listing_id": uid("Lx"), "seller_id": "s", "title": "t", "tenant": "globex"}]})
    assert r.status_code == 200
    items = r.json()["items"]
    assert items[0]["listing_id"] == good and items[0]["signals"]
    assert items[1]["error"]["field"] == "items[1].price"
    assert items[2]["error"]["code"] == "forbidden"


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"{not json", 400, None),
    ({"listing_id": "x"}, 422, "seller_id"),
    ({"listing_id": "x", "seller_id": "s", "title": "t", "price": "cheap"}, 422, "price"),
    ({"listing_id": "x", "seller_id": "s", "title": "t", "images": [{"data_b64": "@@"}]}, 422,
     "images[0].data_b64"),
    ({"listing_id": "x", "seller_id": "s", "title": "t", "titel": "typo"}, 422, "titel"),
    ({"items": [{}] * 300}, 413, "items"),
    (b"[" * 100_000, 400, None),  # nested too deeply for the JSON parser: still a 4xx
])
def test_bad_input_is_a_4xx_naming_the_field(http: httpx.Client, serve_app: Service, body: Any, status: int,
                                             field: str | None) -> None:
    kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = http.post("/v1/listings", headers={**serve_app.headers("acme"), "Content-Type": "application/json"},
                  **kw)
    assert r.status_code == status
    assert error_of(r)["field"] == field


def test_wrong_media_type_and_huge_body(http: httpx.Client, serve_app: Service) -> None:
    r = http.post("/v1/listings", content=b"listing_id=x", headers={**serve_app.headers("acme"),
                                                                     "Content-Type": "text/plain"})
    assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type"
    big = b'{"listing_id": "' + b"x" * (serve_app.config.service.max_body_bytes + 10) + b'"}'
    r = http.post("/v1/listings", content=big, headers={**serve_app.headers("acme"),
                                                        "Content-Type": "application/json"})
    assert r.status_code == 413 and error_of(r)["code"] == "too_large"


def test_keys_decide_the_tenant(http: httpx.Client, serve_app: Service) -> None:
    r = http.post("/v1/listings", json=listing(uid("Lk"), "s"))
    assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
    r = http.post("/v1/listings", json=listing(uid("Lk"), "s"), headers={"X-API-Key": "not-a-key-000000000"})
    assert r.status_code == 401
    r = post(http, serve_app, "/v1/listings", listing(uid("Lk"), "s", tenant="globex"))
    assert r.status_code == 403 and error_of(r)["field"] == "tenant"
    r = get(http, serve_app, "/v1/entities/listing/x/signals?tenant=globex")
    assert r.status_code == 403
    r = get(http, serve_app, "/v1/entities/listing/x/signals?tenant=../../etc")
    assert r.status_code == 422 and error_of(r)["field"] == "tenant"
    bearer = {"Authorization": f"Bearer {serve_app.keys['acme']}"}
    assert http.get("/v1/entities/seller/nobody/signals", headers=bearer).status_code == 404


def test_tenants_never_match_each_other(http: httpx.Client, serve_app: Service) -> None:
    a, b = uid("Lt"), uid("Lt")
    post(http, serve_app, "/v1/listings", listing(a, "seller-t", title=5, image=51), tenant="globex")
    r = post(http, serve_app, "/v1/listings", listing(b, "seller-u", title=5, image=51), tenant="acme")
    assert signal(r.json(), "near_duplicate.count")["value"] == 0
    assert get(http, serve_app, f"/v1/entities/listing/{a}/signals", tenant="acme").status_code == 404
    assert get(http, serve_app, f"/v1/entities/listing/{a}/signals", tenant="globex").status_code == 200


def test_reviews_templated_by_other_reviewers_and_the_product_share(http: httpx.Client,
                                                                   serve_app: Service) -> None:
    p = uid("P")
    r1, r2, r3 = uid("R"), uid("R"), uid("R")
    post(http, serve_app, "/v1/reviews", review(r1, "u1", p))
    r = post(http, serve_app, "/v1/reviews", review(r2, "u2", p))
    assert signal(r.json(), "review.near_duplicate_count")["value"] == 1
    r = post(http, serve_app, "/v1/reviews", review(r3, "u2", p, text="Terrible, broke after a day. "
                                                     "Do not buy, the seller never answered my messages."))
    assert signal(r.json(), "review.near_duplicate_count")["value"] == 0
    first = get(http, serve_app, f"/v1/entities/review/{r1}/signals").json()
    assert signal(first, "review.near_duplicate_count")["value"] == 1  # partner updated
    prod = get(http, serve_app, f"/v1/entities/product/{p}/signals").json()
    share = signal(prod, "product.templated_review_share")
    assert share["evidence"] == {"reviews": 3, "templated_reviews": 2}
    assert http.delete(f"/v1/reviews/{r2}", headers=serve_app.headers("acme")).status_code == 200
    first = get(http, serve_app, f"/v1/entities/review/{r1}/signals").json()
    assert signal(first, "review.near_duplicate_count")["value"] == 0


def test_banks_match_listings_and_reviews(http: httpx.Client, serve_app: Service) -> None:
    bank = uid("scams").lower()
    item = listing("bank-1", "x", title=6, image=None)
    r = post(http, serve_app, f"/v1/banks/{bank}/items", {"modality": "listing_text", "items": [
        {k: item[k] for k in ("listing_id", "title", "description")} | {"reason": "confirmed"}]})
    assert r.status_code == 200 and r.json()["added"] == 1
    r = post(http, serve_app, "/v1/listings", listing(uid("Lbk"), "seller-bk", title=6, image=None))
    match = signal(r.json(), "bank.match")
    assert match["value"] == 1 and match["evidence"]["matches"][0]["bank"] == bank
    img_bank = uid("photos").lower()
    r = post(http, serve_app, f"/v1/banks/{img_bank}/items",
             {"modality": "image_pdq", "kind": "fraud",
              "items": [{"id": "img-1", "data_b64": photo_b64(61)}]})
    assert r.status_code == 200
    r = post(http, serve_app, "/v1/listings", listing(uid("Lbk"), "seller-bk2", title=7, image=61))
    assert any(m["bank"] == img_bank for m in signal(r.json(), "bank.match")["evidence"]["matches"])
    assert http.delete(f"/v1/banks/{bank}/items/bank-1", headers=serve_app.headers("acme")).status_code == 200
    assert http.delete(f"/v1/banks/{bank}/items/bank-1", headers=serve_app.headers("acme")).status_code == 404
    r = post(http, serve_app, "/v1/banks/newbank/items", {"items": [{"listing_id": "b", "title": "t"}]})
    assert r.status_code == 422 and error_of(r)["field"] == "modality"
    r = post(http, serve_app, "/v1/banks/x/items", {"modality": "audio", "items": [{}]})
    assert r.status_code == 422 and error_of(r)["field"] == "modality"
    # another tenant never sees acme's bank
    r = post(http, serve_app, "/v1/listings", listing(uid("Lbk"), "seller-bk3", title=6, image=None),
             tenant="globex")
    assert signal(r.json(), "bank.match")["value"] == 0


def test_labels_are_kept_with_history(http: httpx.Client, serve_app: Service) -> None:
    for lab in ("fraud", "legit"):
        r = post(http, serve_app, "/v1/labels",
                 {"entity_type": "seller", "entity_id": "seller-lab", "label": lab})
        assert r.status_code == 200
    assert r.json()["labels"] == 2 and r.json()["label"]["label"] == "legit"
    r = post(http, serve_app, "/v1/labels", {"entity_type": "planet", "entity_id": "x", "label": "fraud"})
    assert r.status_code == 422 and error_of(r)["field"] == "entity_type"
    # the money at stake, for marketguard report: a loss needs its currency
    r = post(http, serve_app, "/v1/labels", {"entity_type": "listing", "entity_id": "L-lab", "label": "fraud",
                                             "loss_amount": 1199, "currency": "GBP"})
    assert r.status_code == 200 and r.json()["label"]["loss_amount"] == 1199
    r = post(http, serve_app, "/v1/labels", {"entity_type": "listing", "entity_id": "L-lab", "label": "fraud",
                                             "loss_amount": 5})
    assert r.status_code == 422 and error_of(r)["field"] == "currency"


def test_unknown_routes_and_entity_types(http: httpx.Client, serve_app: Service) -> None:
    assert http.get("/v1/nothing").status_code == 404
    r = get(http, serve_app, "/v1/entities/planet/x/signals")
    assert r.status_code == 422 and error_of(r)["field"] == "entity_type"
