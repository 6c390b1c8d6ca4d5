"""The review-text near-duplicate decision: copies with small edits and templates, not common praise."""

from __future__ import annotations

import numpy as np
import pytest

from indexes.config import IndexesConfig, VectorIndexConfig
from indexes.review_templates import ReviewTemplateRule, TextShingles
from indexes.vector import VectorIndex

RULE = ReviewTemplateRule()
TEMPLATE = ("This blender is the best purchase I have made this year. It crushes ice in seconds, "
            "the jug is solid glass and the motor is whisper quiet. Five stars, buy it now!")
EDITED = ("This blender is the best purchase I made this year. It crushes ice in seconds, "
          "the jug is solid glass and the motor is very quiet. Five stars, buy it!")
SPLICED = ("Got it for my mum. It crushes ice in seconds, the jug is solid glass and the motor is "
           "whisper quiet. Delivery was slow though.")
HONEST = ("Decent blender for the price. Ice takes a while and the lid leaks a little if you fill it to "
          "the top, but smoothies come out fine and it cleans easily.")


def nd(a: str, b: str, cosine: float, rule: ReviewTemplateRule = RULE) -> bool:
    x, y = TextShingles.of(a), TextShingles.of(b)
    out = rule.is_near_duplicate(x, y, cosine)
    assert out == rule.is_near_duplicate(y, x, cosine)  # symmetric: batch and service agree
    return out


def test_copies_with_small_edits_and_spliced_templates_are_near_duplicates() -> None:
    assert nd(TEMPLATE, TEMPLATE, 1.0)
    assert nd(TEMPLATE, EDITED, 0.7)  # by the characters, whatever the cosine
    assert nd(TEMPLATE, SPLICED, 0.65)  # a long shared run of words


def test_common_short_praise_is_not_a_template_even_when_identical() -> None:
    praise = ["Great product, fast shipping!", "Great product and fast shipping",
              "Great product, fast shipping!", "Exactly what I needed, nice packaging, great quality!",
              "Exactly what I needed, nice packaging!"]
    for i in range(len(praise)):
        for j in range(i + 1, len(praise)):
            assert not nd(praise[i], praise[j], 0.97), (praise[i], praise[j])


def test_honest_reviews_of_one_product_are_not_near_duplicates() -> None:
    assert not nd(TEMPLATE, HONEST, 0.75)
    # a long paraphrase is caught by the cosine alone, a short text never
    assert nd(TEMPLATE, HONEST, 0.95)
    assert not nd("Works great, love the colour, fast delivery", "Works great, love the colour!", 0.99)


def test_decide_reads_candidate_texts_and_keeps_scores() -> None:
    idx = VectorIndex(VectorIndexConfig(dim=4, quantization="none"))
    v = np.eye(4, dtype=np.float32)
    near = v[0] * 0.8 + v[1] * 0.6
    idx.add(["copy", "praise", "far"], np.stack([near, v[0], v[2]]))
    rule = ReviewTemplateRule(candidate_floor=0.5)
    cands = rule.candidates(idx, v[:1], ["own"])
    assert {h.id for h in cands[0]} == {"copy", "praise"}  # "far" is under the floor
    texts = {"copy": EDITED, "praise": "Great product, fast shipping!", "far": HONEST}
    asked: list[list[str]] = []
    found = rule.decide([TEMPLATE], cands, lambda ids: asked.append(ids) or [texts[i] for i in ids])
    assert [(n.id, round(n.score, 2)) for n in found[0]] == [("copy", 0.8)]
    assert asked == [["copy", "praise"]]  # only the candidates' texts are read


def test_settings_are_checked_and_follow_the_config() -> None:
    with pytest.raises(ValueError, match="cosines"):
        ReviewTemplateRule(candidate_floor=2.0)
    with pytest.raises(ValueError, match="k, min_words"):
        ReviewTemplateRule(k=0)
    cfg = IndexesConfig.model_validate({"thresholds": {"review_text": 0.95},
                                        "near_duplicates": {"max_neighbours": 10}})
    rule = ReviewTemplateRule.from_config(cfg)
    assert rule.paraphrase_cosine == 0.95 and rule.k == 10
