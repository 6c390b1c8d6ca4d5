"""Export a sentence-transformers MiniLM folder to ONNX (fp32 and int8), cached by weights hash.

This is the only module of the project that uses torch, and only inside
:func:`export_fp32`, which runs in a child process (``python -m signals.onnx_export``):
the serving process that calls :func:`ensure_exported` never imports torch, even
when the cache is cold.

The graph holds the whole sentence-transformers pipeline after tokenisation:
BERT encoder -> mean pooling over the attention mask -> L2 normalisation, with
dynamic batch and sequence axes. Inputs ``input_ids`` and ``attention_mask``
(int64, ``batch x seq``); output ``embedding`` (float32, ``batch x dim``, unit rows).

The int8 graph is dynamic quantisation (onnxruntime.quantization): weights int8,
symmetric, **per output channel**; activations quantised per tensor on the fly.
Every constant MatMul and the word-embedding Gather is quantised **except the FFN
output projections of the first** :data:`FP32_FFN_OUT_LAYERS` **layers** (the MatMuls
whose weight is ``intermediate_size x hidden``, in graph order): their input is the
GELU output, whose long positive tail makes per-tensor uint8 activation scales
coarse, and the early layers' error propagates furthest. Measured on 2,048 real
listing titles (README, recipe r2): per-channel everywhere gave mean cosine 0.9927
to fp32 (min 0.983); all six FFN output projections in fp32 (recipe r1) 0.9960
(min 0.991) but those fp32 MatMuls were a third of the run time; layers 0-1 only
(r2) 0.9947 (min 0.988) at about 1.3x the speed of r1.

Cache files live in ``cache_dir`` and are named
``{family}-{sha256[:16]}-r{RECIPE_VERSION}.{fp32|int8}.onnx``: the hash covers the
weights, the tokenizer and the pooling config, so changed weights never reuse a
stale graph; bump :data:`RECIPE_VERSION` whenever the export or quantisation
recipe changes. Files are written under unique temporary names and moved into
place with ``os.replace`` while holding an ``flock`` on a ``.lock`` file, so two
processes racing (or a crash) never leave or read half a file.
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

RECIPE_VERSION = 2
OPSET = 17
# How many FFN output projections, from layer 0 on, the int8 graph keeps in fp32 (see top).
FP32_FFN_OUT_LAYERS = 2
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
    """Where the graphs of this model folder live (computes the weights hash)."""
    digest = weights_digest(model_dir)
    stem = f"{_slug(family)}-{digest[:16]}-r{RECIPE_VERSION}"
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
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
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
    """Dynamic int8 quantisation, per channel; the first layers' FFN output projections stay fp32.

    ``intermediate`` is the FFN width (``intermediate_size`` in config.json): the FFN
    output MatMuls are found by their weight's shape, not by node names that
    depend on the exporter, and taken in graph order (layer 0 first).
    ``fp32_ffn_out_layers`` (default :data:`FP32_FFN_OUT_LAYERS`) of them are left
    in fp32; the rest are quantised like every other MatMul.
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
    quantize_dynamic(fp32, out, op_types_to_quantize=["MatMul", "Gather"], per_channel=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=ffn_out[:keep],
                     extra_options={"MatMulConstBOnly": True})
    q = onnx.load(str(out))
    _stamp(q, digest, "int8")
    onnx.save(q, str(out))
    ids = np.array([[101, 7592, 2088, 102, 0, 0], [101, 2307, 4957, 2005, 2017, 102]])
    mask = (ids != 0).astype(np.int64)
    reference = _run(fp32, ids, mask, threads)
    # A sanity check against a broken graph (which lands far below), not the accuracy
    # figure: that is measured on real titles by benchmarks.embedding.
    _check_close(out, ids, mask, reference, 0.95, threads)


def _stamp(model: object, digest: str, precision: str) -> None:
    """Record provenance in the graph: which weights, which recipe."""
    import onnx

    meta = {"marketguard.source_sha256": digest, "marketguard.recipe": str(RECIPE_VERSION),
            "marketguard.precision": precision}
    existing = {p.key: p for p in model.metadata_props}  # type: ignore[attr-defined]
    for key, value in meta.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.append(  # type: ignore[attr-defined]
                onnx.StringStringEntryProto(key=key, value=value))


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
