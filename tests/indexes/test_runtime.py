"""Process-wide settings: only indexes.runtime makes them, and only when asked."""

from __future__ import annotations

import ast
import gc
import os
from pathlib import Path

import faiss
import pytest

from indexes.config import VectorIndexConfig
from indexes.runtime import configure_process, gc_paused
from indexes.vector import VectorIndex
from signals.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[2]

# Calls that change state every user of the process shares: (module, function).
PROCESS_WIDE = {
    ("faiss", "omp_set_num_threads"), ("torch", "set_num_threads"),
    ("torch", "set_num_interop_threads"), ("gc", "disable"), ("gc", "freeze"),
    ("gc", "set_threshold"), ("warnings", "simplefilter"), ("warnings", "filterwarnings"),
    ("warnings", "catch_warnings"), ("sys", "setrecursionlimit"), ("os", "putenv"),
    ("os", "unsetenv"), ("threadpoolctl", "threadpool_limits"), ("cv2", "setNumThreads"),
}
ENV_WRITES = {"setdefault", "update", "pop", "popitem", "clear", "__setitem__", "__delitem__"}
ALLOWED = {
    "indexes/runtime.py": "the one start-up place",
    "signals/onnx_export.py": "its main() runs in a child process of its own",
    # Owned by another change in progress: the torch backend's thread count and wait policy
    # belong in configure_process(torch_threads=..., omp_wait_policy=...). Remove once moved.
    "signals/text_embedding.py": "to move to indexes.runtime.configure_process",
}


def _is_environ(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and \
        isinstance(node.value, ast.Name) and node.value.id == "os"


def _process_wide(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = node.func.value, node.func.attr
            named = isinstance(owner, ast.Name) and (owner.id, name) in PROCESS_WIDE
            if named or (_is_environ(owner) and name in ENV_WRITES):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            if any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets):
                lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_finds_process_wide_calls() -> None:
    src = "import os, gc, faiss\nos.environ['A'] = '1'\nos.environ.setdefault('B', '2')\n" \
          "gc.disable()\nfaiss.omp_set_num_threads(2)\nx = os.environ.get('C')\n"
    assert _process_wide(ast.parse(src)) == [2, 3, 4, 5]


def test_no_library_module_changes_process_wide_state() -> None:
    found = []
    for path in sorted([*ROOT.glob("signals/**/*.py"), *ROOT.glob("indexes/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel not in ALLOWED:
            text = path.read_text(encoding="utf-8")
            found += [f"{rel}:{n}" for n in _process_wide(ast.parse(text, rel))]
    assert found == []


def test_a_vector_index_leaves_faiss_threads_alone() -> None:
    before = faiss.omp_get_max_threads()
    VectorIndex(VectorIndexConfig(dim=8, threads=1 if before != 1 else 2))
    assert faiss.omp_get_max_threads() == before


def test_configure_process_sets_faiss_threads_and_keeps_an_operators_wait_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = faiss.omp_get_max_threads()
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    try:
        configure_process(faiss_threads=1, omp_wait_policy="passive")
        assert faiss.omp_get_max_threads() == 1
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        configure_process(omp_wait_policy="passive")  # the operator's setting wins
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
        configure_process()  # nothing asked, nothing changed
        assert faiss.omp_get_max_threads() == 1
    finally:
        faiss.omp_set_num_threads(before)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"faiss_threads": 0}, "faiss_threads"),
    ({"torch_threads": True}, "torch_threads"),
    ({"omp_wait_policy": "spin"}, "omp_wait_policy"),
])
def test_configure_process_refuses_bad_settings(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        configure_process(**kwargs)  # type: ignore[arg-type]  # bad values on purpose
    assert e.value.field == field


def test_gc_paused_restores_the_collector() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off on entry: left off
    finally:
        gc.enable()
