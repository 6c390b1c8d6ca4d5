"""FAISS near-duplicate indexes, banks of labelled items, clustering and crash-safe persistence.

Imports ``signals`` and faiss/numpy only; never Ray or HTTP. Nothing happens on import.
"""
