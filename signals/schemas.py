"""Record schemas: Listing, Review, Label and the Signal record (``marketguard.signal/v1``).

These are the boundary: everything that enters MarketGuard (HTTP, batch files, the
CLI) is validated here with the limits a production service needs, and every bad
value is reported as one :class:`~signals.errors.InvalidInput` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import pydantic
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo

from signals.errors import InvalidInput, from_pydantic

SIGNAL_SCHEMA: Final = "marketguard.signal/v1"

EntityType = Literal["listing", "seller", "review", "reviewer", "product"]
RecordKind = Literal["listing", "review"]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"
SIGNAL_NAME_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
SOURCE_PATTERN = r"^[a-z][a-z0-9_]*@[0-9]+$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"

_ID_RE = re.compile(ID_PATTERN)
_TENANT_RE = re.compile(TENANT_PATTERN)


def _check_id(v: str) -> str:
    if not _ID_RE.match(v):
        raise InvalidInput(None, "must be 1-128 characters of letters, digits and . _ : @ -, "
                                 "starting with a letter or digit")
    return v


def _check_tenant(v: str) -> str:
    if not _TENANT_RE.match(v):
        raise InvalidInput(None, "must be 1-63 characters of lower-case letters, digits, _ and -, "
                                 "starting with a letter or digit")
    return v


EntityId = Annotated[str, pydantic.AfterValidator(_check_id),
                     Field(description="1-128 chars: letters, digits, . _ : @ -")]
Tenant = Annotated[str, pydantic.AfterValidator(_check_tenant),
                   Field(description="lower-case tenant name")]


@dataclass(frozen=True)
class Limits:
    """Size limits enforced at the boundary; the service config may tighten them."""

    max_title_chars: int = 300
    max_description_chars: int = 20_000
    max_review_chars: int = 20_000
    max_images: int = 10
    max_image_bytes: int = 10 * 1024 * 1024
    max_url_chars: int = 2048
    max_path_chars: int = 4096
    max_price: float = 1e12


DEFAULT_LIMITS = Limits()


def _limits(info: ValidationInfo) -> Limits:
    ctx = info.context or {}
    limits = ctx.get("limits", DEFAULT_LIMITS)
    if not isinstance(limits, Limits):
        raise TypeError(f"validation context 'limits' must be a Limits, got {type(limits).__name__}")
    return limits


class _Record(BaseModel):
    # Unknown fields are rejected, so a typo ("titel") is a 422 naming it, not silent data loss.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, frozen=True)


class ImageRef(_Record):
    """One listing image: base64 bytes (HTTP), a local path (batch jobs) or an allow-listed URL."""

    data_b64: str | None = None
    path: str | None = None
    url: str | None = None
    _bytes: bytes | None = PrivateAttr(default=None)

    @pydantic.model_validator(mode="after")
    def _exactly_one_source(self, info: ValidationInfo) -> ImageRef:
        given = [k for k in ("data_b64", "path", "url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise InvalidInput(None, "give exactly one of data_b64, path or url")
        limits = _limits(info)
        if self.data_b64 is not None:
            self._bytes = _decode_b64(self.data_b64, limits.max_image_bytes)
        elif self.path is not None:
            if not self.path or len(self.path) > limits.max_path_chars or "\x00" in self.path:
                raise InvalidInput("path", "must be a non-empty file path without NUL bytes")
        elif self.url is not None and (
            len(self.url) > limits.max_url_chars or not re.match(r"^https?://[^\s/]+", self.url)
        ):
            raise InvalidInput("url", "must be an http(s) URL with a host")
        return self

    @property
    def data(self) -> bytes | None:
        """The decoded bytes of a ``data_b64`` image (decoded once, at validation)."""
        return self._bytes


def _decode_b64(text: str, max_bytes: int) -> bytes:
    # Reject on the encoded length first, so a huge body is refused before decoding it.
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise InvalidInput("data_b64", f"image is over {max_bytes} bytes", "too_large")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("data_b64", f"not valid base64 ({exc})") from None
    if not raw:
        raise InvalidInput("data_b64", "image is empty")
    if len(raw) > max_bytes:
        raise InvalidInput("data_b64", f"image is over {max_bytes} bytes", "too_large")
    return raw


class Listing(_Record):
    """A marketplace listing as ingestion sends it."""

    listing_id: EntityId
    seller_id: EntityId
    title: str = Field(min_length=1)
    description: str = ""
    price: float | None = Field(default=None, ge=0)
    currency: str | None = Field(default=None, pattern=CURRENCY_PATTERN)
    category: str | None = Field(default=None, max_length=200)
    images: list[ImageRef] = Field(default_factory=list)
    created_at: AwareDatetime | None = None
    tenant: Tenant = "default"

    @pydantic.field_validator("title")
    @classmethod
    def _title_limit(cls, v: str, info: ValidationInfo) -> str:
        return _check_text(v, _limits(info).max_title_chars, "title")

    @pydantic.field_validator("description")
    @classmethod
    def _description_limit(cls, v: str, info: ValidationInfo) -> str:
        return _check_text(v, _limits(info).max_description_chars, "description")

    @pydantic.field_validator("price")
    @classmethod
    def _price_finite(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and (not math.isfinite(v) or v > _limits(info).max_price):
            raise InvalidInput(None, f"must be a finite number <= {_limits(info).max_price:g}")
        return v

    @pydantic.field_validator("images", mode="before")
    @classmethod
    def _image_count(cls, v: Any, info: ValidationInfo) -> Any:
        # Counted before the items are validated, so 1,000 images are not all decoded first.
        if isinstance(v, list) and len(v) > _limits(info).max_images:
            raise InvalidInput(None, f"at most {_limits(info).max_images} images", "too_large")
        return v

    @pydantic.model_validator(mode="after")
    def _currency_with_price(self) -> Listing:
        if self.price is not None and self.currency is None:
            raise InvalidInput("currency", "required when price is given")
        return self

    @property
    def entity_id(self) -> str:
        return self.listing_id

    @property
    def text(self) -> str:
        """The text that embeddings and content rules read: title, then description."""
        return f"{self.title}\n{self.description}" if self.description else self.title


class Review(_Record):
    """A product review as ingestion sends it."""

    review_id: EntityId
    product_id: EntityId
    seller_id: EntityId
    reviewer_id: EntityId
    rating: int = Field(ge=1, le=5)
    text: str = ""
    created_at: AwareDatetime
    verified_purchase: bool | None = None
    reviewer_created_at: AwareDatetime | None = None
    tenant: Tenant = "default"

    @pydantic.field_validator("text")
    @classmethod
    def _text_limit(cls, v: str, info: ValidationInfo) -> str:
        return _check_text(v, _limits(info).max_review_chars, "text")

    @pydantic.field_validator("rating", mode="before")
    @classmethod
    def _rating_is_integral(cls, v: Any) -> Any:
        # 4.5 must not be silently truncated to 4; "5" from a CSV is fine.
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise InvalidInput(None, "must be a whole number from 1 to 5")
        return v

    @property
    def entity_id(self) -> str:
        return self.review_id


def _check_text(v: str, max_chars: int, name: str) -> str:
    if len(v) > max_chars:
        raise InvalidInput(None, f"{name} is over {max_chars} characters", "too_large")
    if "\x00" in v:
        raise InvalidInput(None, "must not contain NUL characters")
    return v


class Label(_Record):
    """Outcome feedback from case review: an entity confirmed fraud or legit."""

    entity_type: EntityType
    entity_id: EntityId
    label: Literal["fraud", "legit"]
    tenant: Tenant = "default"
    reason: str | None = Field(default=None, max_length=1000)
    labelled_by: str | None = Field(default=None, max_length=200)
    labelled_at: AwareDatetime | None = None
    loss_amount: float | None = Field(default=None, ge=0, description="money at stake: what the fraud "
                                      "cost or would have cost (``marketguard report`` weighs signals by it)")
    currency: str | None = Field(default=None, pattern=CURRENCY_PATTERN)

    @pydantic.field_validator("loss_amount")
    @classmethod
    def _loss_finite(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is not None and (not math.isfinite(v) or v > _limits(info).max_price):
            raise InvalidInput(None, f"must be a finite number <= {_limits(info).max_price:g}")
        return v

    @pydantic.model_validator(mode="after")
    def _currency_with_loss(self) -> Label:
        if self.loss_amount is not None and self.currency is None:
            raise InvalidInput("currency", "required when loss_amount is given")
        return self


SignalValue = bool | int | float | str | None


class Signal(BaseModel):
    """One published signal; idempotent on ``(tenant, entity_type, entity_id, name, source)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Literal["marketguard.signal/v1"] = Field(default=SIGNAL_SCHEMA, alias="schema")
    tenant: Tenant = "default"
    entity_type: EntityType
    entity_id: EntityId
    name: str = Field(pattern=SIGNAL_NAME_PATTERN)
    value: SignalValue
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    evidence: dict[str, Any] = Field(default_factory=dict)
    source: str = Field(pattern=SOURCE_PATTERN)
    shadow: bool = False
    observed_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """The idempotency key: the latest value under it wins in a store."""
        return (self.tenant, self.entity_type, self.entity_id, self.name, self.source)

    def to_json_dict(self) -> dict[str, Any]:
        """The wire form: ``schema`` first, timestamps as ISO-8601 with ``Z``."""
        d = self.model_dump(mode="json", by_alias=True)
        d["observed_at"] = self.observed_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return d


# Bound, not constrained: a caller holding ``type[Listing] | type[Review]`` gets ``Listing | Review``.
RecordT = TypeVar("RecordT", bound=_Record)


def parse_record(model: type[RecordT], data: Any, limits: Limits = DEFAULT_LIMITS) -> RecordT:
    """Validate one raw record; raise :class:`InvalidInput` naming the first bad field."""
    if not isinstance(data, dict):
        raise InvalidInput(None, f"a {model.__name__} must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data, context={"limits": limits})
    except pydantic.ValidationError as exc:
        raise from_pydantic(exc) from None
