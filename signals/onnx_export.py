"""Export a sentence-transformers MiniLM folder to ONNX (fp32 and int8), cached by weights and recipe.

This is the only module of the project that uses torch, and only inside
:func:`export_fp32`, which runs in a child process (``python -m signals.onnx_export``):
the serving process that calls :func:`ensure_exported` never imports torch, even
when the cache is cold.

The graph holds the whole sentence-transformers pipeline after tokenisation:
BERT encoder -> mean pooling over the attention mask -> L2 normalisation, with
dynamic batch and sequence axes. Inputs ``input_ids`` and ``attention_mask``
(int64, ``batch x seq``); output ``embedding`` (float32, ``batch x dim``, unit rows).
Mean pooling is a batched MatMul (each text's mask row times its hidden states), not
a ReduceSum over the sequence axis: onnxruntime's ReduceSum adds in an order that
depends on the batch shape, so the same text got last-bit different vectors in
different batches; the MatMul adds each text's tokens on their own.

**Batch invariance** is the int8 recipe's first requirement: a text's vector must
not depend on the texts it is embedded with (the HTTP service embeds one listing,
the batch job 64, and both feed the same near-duplicate threshold). onnxruntime's
dynamic quantisation (``DynamicQuantizeLinear``) takes one activation scale over the
whole ``batch x seq x hidden`` tensor, so recipe r2 moved a text's vector down to
cosine 0.97 with its batch-mates. Recipe r3 (:func:`quantize_int8`) quantises every
constant MatMul itself, with nothing shared between rows:

- weights int8, symmetric, one scale per output channel (computed here, once);
- activations uint8 with **one symmetric scale per token row** (``max|x| / 127``,
  zero point 128), computed in the graph (ReduceMax/ReduceMin, then a per-axis
  ``QuantizeLinear``) and applied after the integer GEMM
  (``com.microsoft.MatMulIntegerToFloat`` with a ``[..., 1]`` A scale);
- the embedding tables (Gather) int8 per tensor (onnxruntime ``quantize_dynamic``):
  static weights, no activation involved.

Per-row scales are also finer than per-tensor ones, which is why r3 needs no fp32
FFN output projections (r2 kept layers 0-1 in fp32 against the GELU output's long
tail) and is more accurate (docs/text-embeddings.md has the figures).

Cache files live in ``cache_dir`` and are named
``{family}-{sha256[:16]}-r{RECIPE_VERSION}-{recipe[:8]}.{fp32|int8}.onnx``: the sha256
covers the weights, the tokenizer and the pooling config, so changed weights never
reuse a stale graph; ``recipe`` is :func:`recipe_key` (recipe version, opset and the
quantisation knobs), so a changed knob never does either. Bump :data:`RECIPE_VERSION`
whenever the code that builds a graph changes (:data:`GRAPH_CODE`; a test pins that
code's hash to the version, so forgetting fails the tests). Files are written under
unique temporary names and moved into place with ``os.replace`` while holding an
``flock`` on a ``.lock`` file, so two processes racing (or a crash) never leave or
read half a file.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import onnx

# r2: onnxruntime dynamic int8 (per-tensor activation scales); r3: per-row scales (see top).
RECIPE_VERSION = 3
OPSET = 17
# How many FFN output projections, from layer 0 on, the int8 graph keeps in fp32. r2 needed
# 2 against per-tensor scales; with per-row scales 0 and 2 measured the same accuracy.
FP32_FFN_OUT_LAYERS = 0
# The functions (of this module) whose code builds the graphs. A test pins their hash to
# RECIPE_VERSION: change one and the tests ask for a new version, hence a new cache key.
GRAPH_CODE = ("export_fp32", "quantize_int8", "_quantize_matmuls", "_row_quantizer",
              "_int8_per_channel")
Precision = Literal["fp32", "int8"]
# Files whose bytes define the graph and its inputs. model.safetensors is the
# weights; the rest decide tokenisation, architecture and pooling.
_HASHED_FILES = ("model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                 "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
_TORCH_HINT = ("exporting the ONNX graph needs torch (CPU build): "
               "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")

# How many exports this process has started (the cache tests read it).
export_count = 0


@dataclass(frozen=True)
class ExportedModel:
    """Paths of the cached graphs for one model folder and recipe."""

    fp32: Path
    int8: Path
    digest: str


def recipe_settings(precision: Precision) -> dict[str, object]:
    """What besides the weights decides the graph of ``precision``: recipe version and knobs."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"Unsupported precision {precision!r}; use 'fp32' or 'int8'")
    settings: dict[str, object] = {"recipe": RECIPE_VERSION, "opset": OPSET}
    if precision == "int8":
        settings["fp32_ffn_out_layers"] = FP32_FFN_OUT_LAYERS
    return settings


def recipe_key(precision: Precision) -> str:
    """sha256 (hex) of :func:`recipe_settings`: part of cache file names and model ids."""
    text = json.dumps(recipe_settings(precision), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def weights_digest(model_dir: Path) -> str:
    """sha256 over the files that define the model (names and bytes), hex."""
    h = hashlib.sha256()
    found = False
    for rel in _HASHED_FILES:
        path = model_dir / rel
        if not path.is_file():
            continue
        found = found or rel in ("model.safetensors", "pytorch_model.bin")
        h.update(rel.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    if not found:
        raise ValueError(f"model_path {str(model_dir)!r} holds no model.safetensors "
                         "or pytorch_model.bin")
    return h.hexdigest()


def check_model_dir(model_dir: Path) -> None:
    """Refuse folders the export cannot reproduce: it knows Transformer + mean Pooling (+ Normalize)."""
    if not model_dir.is_dir():
        raise ValueError(f"model_path {str(model_dir)!r} is not a directory")
    for rel in ("config.json", "tokenizer.json"):
        if not (model_dir / rel).is_file():
            raise ValueError(f"model_path {str(model_dir)!r} has no {rel} "
                             "(a sentence-transformers folder with a fast tokenizer is needed)")
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        kinds = [m.get("type", "").rsplit(".", 1)[-1]
                 for m in json.loads(modules_file.read_text(encoding="utf-8"))]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            raise ValueError(f"model_path {str(model_dir)!r} has modules {kinds}; the ONNX export "
                             "supports Transformer + Pooling (+ Normalize) only")
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file():
        cfg = json.loads(pooling.read_text(encoding="utf-8"))
        modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
        if modes != ["pooling_mode_mean_tokens"]:
            raise ValueError(f"model_path {str(model_dir)!r} pools with {modes}; "
                             "the ONNX export supports mean pooling only")


def cache_paths(model_dir: Path, cache_dir: Path, family: str) -> ExportedModel:
    """Where the graphs of this model folder live (computes the weights hash).

    One stem for both files, keyed by the weights and by the int8 recipe (a superset of
    the fp32 one): the two are exported together.
    """
    digest = weights_digest(model_dir)
    stem = f"{_slug(family)}-{digest[:16]}-r{RECIPE_VERSION}-{recipe_key('int8')[:8]}"
    return ExportedModel(cache_dir / f"{stem}.fp32.onnx", cache_dir / f"{stem}.int8.onnx", digest)


def ensure_exported(model_dir: Path, cache_dir: Path, family: str, threads: int) -> ExportedModel:
    """The cached fp32 and int8 graphs of ``model_dir``, exporting them first if missing.

    Safe against concurrent callers (threads or processes): one exports while the
    others wait on the lock, then find the files.
    """
    check_model_dir(model_dir)
    paths = cache_paths(model_dir, cache_dir, family)
    if paths.fp32.is_file() and paths.int8.is_file():
        return paths
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock_path = paths.fp32.with_name(paths.fp32.name.removesuffix(".fp32.onnx") + ".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if paths.fp32.is_file() and paths.int8.is_file():
                return paths  # another process exported it while we waited
            tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp_fp32 = paths.fp32.with_name(paths.fp32.name + tag)
            tmp_int8 = paths.int8.with_name(paths.int8.name + tag)
            try:
                _run_export(model_dir, tmp_fp32, tmp_int8, paths.digest, threads)
                # fp32 first: a reader checks for both, so a crash in between only
                # means the next caller exports again.
                os.replace(tmp_fp32, paths.fp32)
                os.replace(tmp_int8, paths.int8)
            finally:
                for tmp in (tmp_fp32, tmp_int8):
                    tmp.unlink(missing_ok=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return paths


def _run_export(model_dir: Path, out_fp32: Path, out_int8: Path, digest: str,
                threads: int) -> None:
    """Export in a child process so that torch never enters the caller's process."""
    global export_count
    export_count += 1
    env = dict(os.environ)
    # Never reach a model hub: everything comes from model_dir.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "signals.onnx_export", str(model_dir), str(out_fp32),
           str(out_int8), "--digest", digest, "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"ONNX export of {model_dir} failed (exit {proc.returncode}):\n{tail}")


def export_fp32(model_dir: Path, out: Path, digest: str, threads: int) -> None:
    """Trace the encoder + mean pooling + L2 normalisation into one fp32 ONNX graph."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise ImportError(f"{_TORCH_HINT} ({exc})") from exc
    import onnx

    torch.set_num_threads(threads)
    # Eager attention traces to plain MatMul/Softmax, which onnxruntime fuses itself.
    encoder = AutoModel.from_pretrained(model_dir, local_files_only=True,
                                        attn_implementation="eager").eval()

    class _Pipeline(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # One segment only, as sentence-transformers feeds it: token types are zeros.
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            # Masked sum as a batched MatMul (batch x 1 x seq @ batch x seq x dim): each
            # text's tokens are added on their own, in an order the batch cannot change.
            mask = attention_mask.unsqueeze(1).to(hidden.dtype)
            summed = torch.matmul(mask, hidden).squeeze(1)
            pooled = summed / mask.sum(dim=2).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    pipeline = _Pipeline(encoder).eval()
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 2307, 4957, 2005, 2017, 102]])
    mask = (ids != 0).to(torch.int64)
    # The legacy TorchScript exporter: dynamic_axes is its native way to free batch and
    # sequence, and it needs no onnxscript (the dynamo exporter does).
    with torch.no_grad():
        torch.onnx.export(pipeline, (ids, mask), str(out), input_names=["input_ids",
                          "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "embedding": {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
        expected = pipeline(ids, mask).numpy()
    model = onnx.load(str(out))
    _stamp(model, digest, "fp32")
    onnx.save(model, str(out))
    _check_close(out, ids.numpy(), mask.numpy(), expected, 0.9999, threads)


def quantize_int8(fp32: Path, out: Path, digest: str, intermediate: int, threads: int,
                  fp32_ffn_out_layers: int | None = None) -> None:
    """Int8 with per-row activation scales (see top): every constant MatMul, the embedding tables.

    ``intermediate`` is the FFN width (``intermediate_size`` in config.json): the FFN
    output MatMuls are found by their weight's shape, not by node names that depend
    on the exporter, and taken in graph order (layer 0 first); the first
    ``fp32_ffn_out_layers`` (default :data:`FP32_FFN_OUT_LAYERS`) of them stay fp32.
    The result is checked against the fp32 graph and for batch invariance.
    """
    import numpy as np
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = FP32_FFN_OUT_LAYERS if fp32_ffn_out_layers is None else fp32_ffn_out_layers
    model = onnx.load(str(fp32))
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    ffn_out = [n.name for n in model.graph.node
               if n.op_type == "MatMul" and len(weights.get(n.input[1], ())) == 2
               and weights[n.input[1]][0] == intermediate]
    if len(ffn_out) < keep:
        raise RuntimeError(f"found {len(ffn_out)} FFN output MatMuls ({intermediate} x hidden) in "
                           f"{fp32}, need {keep}; the quantisation recipe does not fit this graph")
    # The embedding tables: onnxruntime's weight-only Gather quantisation (a per-tensor int8
    # table + DequantizeLinear after the lookup); the MatMuls are ours, below.
    gathered = out.with_name(out.name + ".gather")
    try:
        quantize_dynamic(fp32, gathered, op_types_to_quantize=["Gather"],
                         weight_type=QuantType.QInt8)
        q = onnx.load(str(gathered))
    finally:
        gathered.unlink(missing_ok=True)
    done = _quantize_matmuls(q, exclude=set(ffn_out[:keep]))
    if done == 0:
        raise RuntimeError(f"no MatMul with a constant 2-D weight in {fp32}: nothing to quantise")
    _stamp(q, digest, "int8")
    onnx.save(q, str(out))
    ids = np.array([[101, 7592, 2088, 102, 0, 0], [101, 2307, 4957, 2005, 2017, 102]])
    mask = (ids != 0).astype(np.int64)
    reference = _run(fp32, ids, mask, threads)
    # A sanity check against a broken graph (which lands far below), not the accuracy
    # figure: that is measured on real titles by benchmarks.embedding.
    _check_close(out, ids, mask, reference, 0.95, threads)
    # The recipe's point: each row alone (unpadded) gives the batch's vector.
    alone = np.concatenate([np.asarray(_run(out, ids[i:i + 1, :int(mask[i].sum())],
                                            mask[i:i + 1, :int(mask[i].sum())], threads))
                            for i in range(len(ids))])
    _check_close(out, ids, mask, alone, 0.99999, threads)


def _quantize_matmuls(model: onnx.ModelProto, exclude: set[str]) -> int:
    """Rewrite, in place, each MatMul by a constant 2-D weight to int8 with per-row scales.

    ``y = x @ W`` becomes ``MatMulIntegerToFloat(q, Wq, s_row, s_col, 128)`` where ``q`` is
    ``x`` quantised row by row (:func:`_row_quantizer`, shared by the MatMuls that read
    the same ``x``: query, key and value) and ``Wq, s_col`` come from
    :func:`_int8_per_channel`. Nodes named in ``exclude`` stay fp32. Returns how many
    MatMuls were rewritten.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    added: dict[str, onnx.TensorProto] = {}

    def const(name: str, value: np.ndarray) -> str:
        """A new initializer ``name`` (one per name: the row quantisers share theirs)."""
        if name not in added:
            added[name] = numpy_helper.from_array(value, name)
        return name

    zero_point = const("rowq/zero_point", np.array(128, dtype=np.uint8))
    quantised: dict[str, tuple[str, str]] = {}  # activation -> (uint8 rows, row scales)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or len(w.dims) != 2 or node.name in exclude:
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in quantised:
            # Inserted before its first reader, which comes after x's producer.
            quantised[x] = _row_quantizer(x, nodes, const)
        rows, row_scale = quantised[x]
        wq, col_scale = _int8_per_channel(numpy_helper.to_array(w))
        name = node.name or node.output[0]
        nodes.append(helper.make_node(
            "MatMulIntegerToFloat",
            [rows, const(f"{name}/Wq", wq), row_scale, const(f"{name}/w_scale", col_scale),
             zero_point],
            [node.output[0]], name=f"{name}/int8", domain="com.microsoft"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name in used] + [t for t in added.values()
                                                                if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return count


def _row_quantizer(x: str, nodes: list[onnx.NodeProto],
                   const: Callable[[str, np.ndarray], str]) -> tuple[str, str]:
    """Append nodes quantising float ``x`` (``... x width``) row by row; return (rows, scales).

    Each row gets its own symmetric scale ``max|row| / 127`` and zero point 128, so
    every value lands in 1..255 and no row's scale depends on another row. ``rows`` is
    uint8 shaped like ``x``; ``scales`` is float ``... x 1`` (MatMulIntegerToFloat
    multiplies the GEMM's rows by it). Six small nodes and no shape arithmetic: at
    batch 1 a graph run is short enough for node count to show.
    """
    import numpy as np
    from onnx import helper

    p = f"{x}/rowq"

    def node(op: str, inputs: list[str], **attrs: int | list[int]) -> str:
        out = f"{p}/{op}_{len(nodes)}"
        made = helper.make_node(op, inputs, [out], name=out)
        made.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        nodes.append(made)
        return out

    amax = node("ReduceMax", [node("Abs", [x])], axes=[-1], keepdims=1)
    # The floor keeps an all-zero row (max 0) finite.
    scale = node("Div", [node("Max", [amax, const("rowq/floor", np.array(1e-12, np.float32))]),
                         const("rowq/qmax", np.array(127.0, np.float32))])
    # x / scale is in [-127, 127]; QuantizeLinear with unit scale rounds (half to even, as
    # DynamicQuantizeLinear does), adds the zero point and casts in one pass.
    rows = node("QuantizeLinear", [node("Div", [x, scale]),
                                   const("rowq/unit", np.array(1.0, np.float32)),
                                   const("rowq/zero_point", np.array(128, np.uint8))])
    return rows, scale


def _int8_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights with one scale per output column: ``(Wq, scale)``, ``W ~ Wq * scale``."""
    import numpy as np

    w = w.astype(np.float32)
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    wq = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return wq, scale


def _stamp(model: onnx.ModelProto, digest: str, precision: Precision) -> None:
    """Record provenance in the graph: which weights, which recipe (the engine checks the key)."""
    import onnx

    meta = {"marketguard.source_sha256": digest, "marketguard.recipe": str(RECIPE_VERSION),
            "marketguard.recipe_key": recipe_key(precision), "marketguard.precision": precision}
    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


def _run(path: Path, ids: object, mask: object, threads: int) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def _check_close(path: Path, ids: object, mask: object, expected: object, min_cos: float,
                 threads: int) -> None:
    """Refuse a graph whose output drifts from the reference on padded inputs."""
    import numpy as np

    got = np.asarray(_run(path, ids, mask, threads))
    cos = (got * np.asarray(expected)).sum(axis=1)
    if not np.all(cos > min_cos):
        raise RuntimeError(f"exported graph {path.name} disagrees with its reference: "
                           f"cosines {cos.tolist()} (need > {min_cos})")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def main(argv: list[str] | None = None) -> int:
    """Child-process entry point: export fp32, then quantise it to int8."""
    parser = argparse.ArgumentParser(prog="python -m signals.onnx_export", description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out_fp32", type=Path)
    parser.add_argument("out_int8", type=Path)
    parser.add_argument("--digest", default="")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import warnings

    # The tracer's warnings are about shapes it freezes; _check_close verifies the result.
    warnings.filterwarnings("ignore")
    config = json.loads((args.model_dir / "config.json").read_text(encoding="utf-8"))
    digest = args.digest or weights_digest(args.model_dir)
    try:
        export_fp32(args.model_dir, args.out_fp32, digest, args.threads)
    except ImportError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    quantize_int8(args.out_fp32, args.out_int8, digest, int(config.get("intermediate_size", 0)),
                  args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
