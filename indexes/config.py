"""Typed configuration of the indexes: one pydantic model per component.

The service's top-level config nests :class:`IndexesConfig`; nothing here reads
environment variables or files. Thresholds are data: the per-modality defaults live
in :class:`ThresholdsConfig` and can be re-derived from labelled pairs with
:func:`indexes.thresholds.pick_threshold`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from signals.vocabulary import Modality

Quantization = Literal["none", "sq8", "fp16"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VectorIndexConfig(_Config):
    """The unit-vector index (``indexes/vector.py``): inner product on L2-normalised vectors.

    Exact (``IndexFlatIP``) up to ``exact_max`` vectors; past that it trains an IVF
    partition (``nlist`` cells, ``nprobe`` searched) with optional scalar quantisation.
    """

    dim: int = Field(default=384, ge=2, le=4096)
    exact_max: int = Field(default=20_000, ge=1, description="flat exact index up to this size")
    quantization: Quantization = "sq8"
    nlist: int | None = Field(default=None, ge=1, description="IVF cells; default ~4*sqrt(n) at training")
    # 128 is what reached recall@10 >= 0.95 at 1M x 384 (benchmarks/results/index.json).
    nprobe: int = Field(default=128, ge=1, le=65_536)
    train_sample: int = Field(default=100_000, ge=1_000, description="vectors used to train the IVF")
    retrain_growth: float = Field(
        default=4.0, ge=1.5, description="compaction re-trains the IVF once n grew by this factor"
    )
    norm_tolerance: float = Field(default=1e-3, gt=0, lt=1, description="allowed | ||v|| - 1 |")
    threads: int | None = Field(
        default=None, ge=1, le=256,
        description="faiss OpenMP threads, process-wide: applied at start-up by "
                    "indexes.runtime.configure_process(faiss_threads=...), never by an index")


class PdqIndexConfig(_Config):
    """The PDQ binary index (``indexes/pdq.py``): 256-bit hashes, Hamming distance.

    Exact linear scan up to ``exact_max`` hashes; past that a multi-index hash (16
    tables of 16-bit chunks) that is still exact for ``max_distance`` < 64. Adds land
    in a tail scanned linearly until it is ``tail_fraction`` of the index.
    """

    threshold: int = Field(default=31, ge=0, le=256, description="HMA's default match distance")
    exact_max: int = Field(default=50_000, ge=1)
    tail_min: int = Field(default=20_000, ge=1, description="tail always allowed up to this many")
    tail_fraction: float = Field(default=0.02, gt=0, le=1)
    compact_dead_fraction: float = Field(
        default=0.1, gt=0, le=1, description="rebuild once this share of rows are tombstones"
    )


class PersistenceConfig(_Config):
    """Snapshot + mutation log (``indexes/persistence.py``)."""

    fsync: bool = Field(default=True, description="fsync the log before a mutation returns")
    compact_log_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="snapshot and truncate once the log is this big"
    )


class ClusteringConfig(_Config):
    """Near-duplicate clustering (``indexes/clustering.py``)."""

    threshold: float = Field(default=0.9, ge=-1, le=1, description="pair similarity threshold")
    block_size: int = Field(default=4096, ge=1, description="queries per block of the all-pairs pass")
    guard_size: int = Field(
        default=50, ge=2, description="clusters at least this big merge only on a strong link"
    )
    guard_threshold: float = Field(
        default=0.97, ge=-1, le=1, description="similarity needed to merge two guarded clusters"
    )

    @model_validator(mode="after")
    def _guard_is_tighter(self) -> ClusteringConfig:
        if self.guard_threshold < self.threshold:
            raise ValueError(
                f"guard_threshold {self.guard_threshold!r} must be >= threshold {self.threshold!r}"
            )
        return self


class ThresholdsConfig(_Config):
    """Per-modality match thresholds: similarity for vectors, Hamming distance for PDQ.

    The vector defaults are starting points (MiniLM near-duplicate titles ~0.9, SSCD's
    published copy-detection operating point ~0.75); re-derive them from labelled
    pairs with :func:`indexes.thresholds.pick_threshold`.
    """

    listing_text: float = Field(default=0.90, ge=-1, le=1)
    review_text: float = Field(default=0.92, ge=-1, le=1)
    image_sscd: float = Field(default=0.75, ge=-1, le=1)
    image_pdq: int = Field(default=31, ge=0, le=256)

    def for_modality(self, modality: Modality) -> float:
        """The threshold of one modality (a similarity, or a distance for ``image_pdq``)."""
        return float(getattr(self, modality))


class BanksConfig(_Config):
    """Banks of labelled items (``indexes/banks.py``)."""

    text_dim: int = Field(default=384, ge=2, le=4096)
    sscd_dim: int = Field(default=512, ge=2, le=4096)
    top_k: int = Field(default=10, ge=1, le=1000, description="matches per bank and query, at most")


class NearDuplicateConfig(_Config):
    """How near-duplicate listings and reviews are decided (``indexes/near_duplicates.py``).

    Listing text: each listing's ``text_k`` nearest neighbours by embedding cosine (those
    at or above ``text_candidate_floor``) are candidates; the pair scorer decides (model
    numbers, sizes, prices), or, with ``pair_scorer: none``, the ``listing_text`` cosine
    threshold. A pair at or above ``text_copy_cosine`` is a copy whatever the scorer says:
    the scorer weighs price, and a scam repost copies the text but baits with the price.
    Images: SSCD candidates (regions too) verified on local features (the ``image_*`` keys;
    ``thresholds.image_sscd`` only where an image has no local features), and PDQ Hamming
    within ``thresholds.image_pdq``; PDQ hashes below ``pdq_min_quality`` (flat,
    featureless images) never match.
    """

    # 50 and 0.4: picked on the listing-pair benchmarks' valid splits (never test), where
    # k=20 at 0.5 put only 81% of WDC's matching pairs in front of the scorer and k=50 at 0.4
    # 92% (0.3 adds 0.2%); benchmarks/results/batch.json has the job's end-to-end F1.
    text_k: int = Field(default=50, ge=1, le=1000, description="text neighbours scored per listing")
    text_candidate_floor: float = Field(default=0.4, ge=-1, le=1,
                                        description="cosine below which a neighbour is not scored")
    pair_scorer: str = Field(
        default="default",
        description="'default' (the shipped indexes/models/pair_scorer.json), 'none' (cosine "
                    "threshold only), or the path of a scorer JSON fitted on your own labels")
    text_copy_cosine: float | None = Field(
        default=0.985, ge=-1, le=1,
        description="a pair this close is a copy whatever the scorer says (a bait-priced repost of a "
                    "listing has the same text and a very different price); null: the scorer alone")
    text_copy_title_similarity: float | None = Field(
        default=0.9, ge=0, le=1,
        description="titles at least this alike (character-3-gram cosine) are also judged as a copy: "
                    "on the text alone, prices ignored; null: the pair scorer's same-product "
                    "score alone (prices included)")
    max_neighbours: int = Field(
        default=100, ge=1, le=100_000,
        description="near-duplicates kept per item and modality, best first: a stock photo on 30k "
                    "listings must not make 30k x 30k pairs (counts saturate here)")
    pdq_min_quality: int = Field(default=50, ge=0, le=100, description="PDQ quality needed to match")
    pdq_variants: bool = Field(default=True,
                               description="also match the mirrored and frame-trimmed PDQ hashes")
    # Image copies (ImageNearDuplicates): SSCD candidates over regions, verified on local features.
    # Defaults chosen in benchmarks/images.py on the fitting half of the photos (never the
    # half the figures are reported on); see docs/images.md.
    image_regions: bool = Field(
        default=True, description="index and query the SSCD vectors of each image's regions "
                                  "(quarter tiles, centre) beside the whole image's")
    image_k: int = Field(default=20, ge=1, le=1000, description="candidate images verified per query image")
    image_candidate_floor: float = Field(
        default=0.3, ge=-1, le=1, description="best region cosine below which an image is no candidate")
    image_verify: bool = Field(
        default=True, description="decide candidates by geometric verification of local features; "
                                  "false: the thresholds.image_sscd cosine alone (the old rule)")
    image_min_inliers: int = Field(default=6, ge=4, le=10_000,
                                   description="geometric inliers a verified copy needs")
    image_min_density: float = Field(
        default=0.08, ge=0, le=1,
        description="inliers per keypoint where the two images overlap (the better direction): a copy "
                    "matches densely, photos sharing only a head, hands or a logo sparsely")
    image_min_spread: float = Field(
        default=0.0, ge=0, le=1,
        description="how far the inliers spread: sqrt(their hull's area / the image's keypoint box)")
    image_accept_cosine: float | None = Field(
        default=None, ge=-1, le=1,
        description="a candidate this close is a copy without verification; null: always verify")


class IndexesConfig(_Config):
    """All index settings, nested in the service config."""

    vector: VectorIndexConfig = Field(default_factory=VectorIndexConfig)
    pdq: PdqIndexConfig = Field(default_factory=PdqIndexConfig)
    persistence: PersistenceConfig = Field(default_factory=PersistenceConfig)
    clustering: ClusteringConfig = Field(default_factory=ClusteringConfig)
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)
    banks: BanksConfig = Field(default_factory=BanksConfig)
    near_duplicates: NearDuplicateConfig = Field(default_factory=NearDuplicateConfig)
