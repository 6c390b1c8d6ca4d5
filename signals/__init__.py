"""Signal extractors: record schemas, text embeddings, content rules (no Ray, no HTTP, no FAISS)."""
