"""The words every layer shares: the match modalities and the kinds of bank.

Defined once here; ``indexes`` (its config, banks and clusters) and ``serving`` import
them from this module, so a new modality is added in one place. No imports beyond typing.
"""

from __future__ import annotations

from typing import Literal, get_args

Modality = Literal["listing_text", "review_text", "image_pdq", "image_sscd"]
"""What a match was found through: a text embedding, a PDQ hash or an SSCD embedding."""
MODALITIES: tuple[Modality, ...] = get_args(Modality)
IMAGE_MODALITIES: tuple[Modality, ...] = ("image_pdq", "image_sscd")

BankKind = Literal["fraud", "benign"]
"""``fraud``: known-bad items; ``benign``: known-good look-alikes, weighed against them."""
BANK_KINDS: tuple[BankKind, ...] = get_args(BankKind)
