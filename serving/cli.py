"""The ``marketguard`` command line.

``marketguard extract listing|review FILE`` prints the signals of one record (or of
each record of a JSON array or a JSONL file) as JSON lines, in process;
``marketguard batch listings|reviews --input PATH --out DIR`` runs the Ray job over a
whole catalogue (:mod:`serving.batch.job`). Both use the same extractor objects as
the HTTP service. Bad input exits
non-zero with a message naming the field, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from serving.batch.inputs import resolve_image_paths
from serving.config import MarketGuardConfig, configure_process, load_config
from serving.image_fetch import url_fetcher_for
from signals.errors import InvalidInput
from signals.registry import build_registry
from signals.schemas import Listing, Review, parse_record

EXIT_OK = 0
EXIT_ITEM_ERRORS = 1  # the input was read, but some record or extractor failed
EXIT_USAGE = 2  # the input could not be read at all (missing file, bad JSON, bad config)

_MAX_INPUT_BYTES = 256 * 1024 * 1024


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``marketguard`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, data_dir=args.data_dir)
        configure_process(config)
        return int(args.handler(args, config, sys.stdout, sys.stderr))
    except InvalidInput as exc:
        print(f"marketguard: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`marketguard extract ... | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketguard", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None,
                        help="YAML or JSON config file (default: $MARKETGUARD_CONFIG, else built-in)")
    common.add_argument("--data-dir", type=Path, default=None,
                        help="state directory: models cache, indexes, signal store (default ./var)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    extract = sub.add_parser(
        "extract", parents=[common],
        help="signals of one record, in process, printed as JSON lines",
        description="Print the signals of a listing or review record as JSON lines. FILE holds "
                    "one JSON object, a JSON array of objects, or JSON lines (one object a line). "
                    "Image paths are read relative to FILE's folder.")
    extract.add_argument("kind", choices=["listing", "review"])
    extract.add_argument("file", type=Path, metavar="FILE.json")
    extract.set_defaults(handler=_cmd_extract)

    batch = sub.add_parser(
        "batch", parents=[common],
        help="a Ray job over a whole catalogue: signals, near-duplicate pairs, clusters, index snapshots",
        description="Run the extractors and the all-pairs near-duplicate search over a catalogue (JSONL, "
                    "CSV or Parquet; a file or a folder) on Ray. Writes DIR/signals.jsonl, "
                    "DIR/pairs.parquet, DIR/clusters.parquet, DIR/rejected.jsonl, DIR/summary.json and "
                    "the service's index snapshots in DIR/indexes/. Re-run with the same arguments, it "
                    "resumes where it stopped.")
    batch.add_argument("kind", choices=["listings", "reviews"])
    batch.add_argument("--input", type=Path, required=True, metavar="PATH",
                       help="a .jsonl/.csv/.parquet file, or a folder of them")
    batch.add_argument("--out", type=Path, required=True, metavar="DIR", help="output and checkpoint folder")
    batch.add_argument("--address", default=None, metavar="RAY_ADDRESS",
                       help="an existing Ray cluster (ray://host:10001, host:6379 or auto); default: a "
                            "local Ray started for this job")
    batch.add_argument("--restart", action="store_true",
                       help="discard a previous run in DIR instead of resuming it")
    batch.add_argument("--progress", choices=["auto", "bar", "lines", "off"], default="auto",
                       help="a bar on a terminal, plain lines in logs (default: auto)")
    batch.add_argument("--publish", action="store_true",
                       help="then send the run's signals to the configured sinks (resumable; a finished "
                            "run's signals are never sent twice)")
    batch.add_argument("--labels", type=Path, default=None, metavar="FILE.jsonl",
                       help="reviews: labels ({entity_type, entity_id, label}) that seed the collective "
                            "scores (SpEagle+)")
    batch.set_defaults(handler=_cmd_batch)

    serve_cmd = sub.add_parser(
        "serve", parents=[common],
        help="the HTTP service (Ray Serve): score listings and reviews as they arrive",
        description="Start the HTTP service on a local Ray: POST /v1/listings and /v1/reviews, entity "
                    "signals, banks, labels, /healthz, /readyz, /metrics; OpenAPI at /docs. Without API "
                    "keys it listens on loopback only (local mode).")
    serve_cmd.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve_cmd.add_argument("--demo", action="store_true",
                           help="seed a NEW data dir with the bundled demo catalogue and scam bank")
    serve_cmd.add_argument("--from-batch", type=Path, default=None, metavar="RUN_DIR",
                           help="start a new data dir from a finished `marketguard batch` run: its "
                                "snapshots, records, pairs and signals (docs/serving.md)")
    serve_cmd.set_defaults(handler=_cmd_serve)

    reindex = sub.add_parser(
        "reindex", parents=[common],
        help="rebuild the indexes from the stored records with the configured models",
        description="Rebuild every tenant's indexes from the signal store (after a model change). The "
                    "service must be stopped.")
    reindex.set_defaults(handler=_cmd_reindex)

    bank = sub.add_parser(
        "bank", help="banks of labelled items (fraud / benign listings, images, reviews): import, export",
        description="The data dir's global banks (every tenant's, as service.global_banks allows), written "
                    "directly: stop the service first (it holds them open; a running service's own banks "
                    "take POST /v1/banks/{bank}/items). See serving/bank_command.py and README.")
    bank_sub = bank.add_subparsers(dest="bank_command", required=True)
    bank_import = bank_sub.add_parser(
        "import", parents=[common], help="add a file's items to a bank (created if new)",
        description="FILE: JSONL of content ({\"review_id\", \"text\"}, {\"listing_id\", \"title\", ...}, "
                    "{\"id\", \"path\"} images), an export of `bank export`, or a ThreatExchange/HMA CSV "
                    "of PDQ hashes (.csv).")
    bank_import.add_argument("bank", metavar="BANK")
    bank_import.add_argument("file", type=Path, metavar="FILE")
    bank_import.add_argument("--kind", choices=["fraud", "benign"], default=None,
                             help="a new bank's kind (default: the kind FILE's lines name, as an "
                                  "export's do, else fraud: known bad); an existing bank's must match")
    bank_import.add_argument("--modality", default=None,
                             choices=["listing_text", "review_text", "image_pdq", "image_sscd"],
                             help="a new bank's modality (default: told by FILE's first line)")
    bank_import.set_defaults(handler=_cmd_bank_import)
    bank_export = bank_sub.add_parser(
        "export", parents=[common], help="write a bank's items to a file (JSONL; HMA CSV for PDQ to .csv)")
    bank_export.add_argument("bank", metavar="BANK")
    bank_export.add_argument("file", type=Path, metavar="FILE")
    bank_export.add_argument("--kind", choices=["fraud", "benign"], default=None,
                             help="check that the bank is of this kind (an error if not)")
    bank_export.set_defaults(handler=_cmd_bank_export)

    sinks = sub.add_parser("sinks", help="the publishing outbox: dead letters",
                           description="Signals are queued for each configured sink and delivered at least "
                                       "once; events a failing sink could not take for "
                                       "sinks.dead_letter_after_s go to the dead letters.")
    sinks_sub = sinks.add_subparsers(dest="sinks_command", required=True)
    replay = sinks_sub.add_parser(
        "replay", parents=[common], help="queue the dead letters again",
        description="Queue every dead letter (of one sink, or all) for delivery again, with its event id and "
                    "sequence number: consumers keep the newest value, so a replay never overwrites a newer "
                    "one. Works while the service runs.")
    replay.add_argument("--sink", default=None, help="only this sink ('redis', or 'webhook:<id>' as in "
                                                     "/metrics)")
    replay.add_argument("--run", type=Path, default=None, metavar="RUN_DIR",
                        help="a batch run's --publish outbox instead of the service's store")
    replay.set_defaults(handler=_cmd_sinks_replay)

    labels = sub.add_parser("labels", help="outcome labels (an entity confirmed fraud or legit)",
                            description="Outcome labels feed `marketguard report`; POST /v1/labels "
                                        "takes them one at a time.")
    labels_sub = labels.add_subparsers(dest="labels_command", required=True)
    imp = labels_sub.add_parser(
        "import", parents=[common], help="labels from a JSONL file into the store",
        description="Store the labels of a JSONL file (one Label a line: entity_type, entity_id, "
                    "label fraud|legit, reason, labelled_by, labelled_at, tenant, loss_amount, currency). "
                    "Every line is checked first: if any is bad, each bad line is named with its number "
                    "and NOTHING is imported (fix the file and run again; nothing is stored twice). "
                    "Earlier labels of an entity are kept; the latest counts. Works while the service "
                    "runs.")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.set_defaults(handler=_cmd_labels_import)

    report = sub.add_parser(
        "report", parents=[common], help="each signal's effect against outcome labels: an HTML page",
        description="Judge every signal against outcome labels: precision, recall, lift, coverage, "
                    "false-positive rate, money at stake and honest sellers and buyers affected, by "
                    "threshold; per tenant and category; shadow candidates beside the live signals. Reads "
                    "the live store (--data-dir), or a batch run's signals.jsonl with a labels JSONL. "
                    "Writes DIR/report.html (self-contained), DIR/report.json and DIR/plots/*.png.")
    report.add_argument("--out", type=Path, required=True, metavar="DIR")
    report.add_argument("--signals", type=Path, default=None, metavar="FILE",
                        help="a batch run's signals.jsonl, or its run folder (default: the store's signals)")
    report.add_argument("--labels", type=Path, default=None, metavar="FILE",
                        help="labels JSONL (needed with --signals; default: the store's labels)")
    report.add_argument("--since", default=None, metavar="T",
                        help="only signals observed at or after T (ISO-8601)")
    report.add_argument("--until", default=None, metavar="T", help="only signals observed before T")
    report.add_argument("--target-precision", type=float, default=None, metavar="P",
                        help="operating threshold: the lowest reaching precision P (default: config "
                             "report.target_precision, 0.9)")
    report.set_defaults(handler=_cmd_report)
    return parser


def _stores(config: MarketGuardConfig) -> list[Any]:
    """Every catalogue shard's store, opened beside a running service (no sinks, not exclusive)."""
    from serving.deployments.catalogue import open_store

    shards = config.service.catalogue.shards
    return [open_store(config, shard, shards, with_sinks=False, exclusive=False) for shard in range(shards)]


def _cmd_labels_import(args: argparse.Namespace, config: MarketGuardConfig,
                       out: TextIO, err: TextIO) -> int:
    from serving.deployments.ingress import shard_of
    from serving.report.inputs import read_label_lines
    from signals.schemas import Label

    good: list[Label] = []
    bad = 0
    for n, raw, error in read_label_lines(args.file):
        if raw is not None:
            try:
                good.append(parse_record(Label, raw))
                continue
            except InvalidInput as exc:
                error = str(exc)
        print(f"marketguard: {args.file} line {n}: {error}", file=err)
        bad += 1
    if bad:
        print(f"marketguard: {bad} bad line(s); nothing imported", file=err)
        return EXIT_ITEM_ERRORS
    shards = config.service.catalogue.shards
    stores = _stores(config)
    try:
        for shard, store in enumerate(stores):
            store.add_labels([lab for lab in good if shard_of(lab.tenant, shards) == shard])
    finally:
        for store in stores:
            store.close()
    out.write(json.dumps({"imported": len(good)}) + "\n")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace, config: MarketGuardConfig,
                out: TextIO, err: TextIO) -> int:
    from serving.report.build import build_report
    from serving.report.inputs import from_files, from_stores, parse_time
    from serving.report.render import render

    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    target = args.target_precision if args.target_precision is not None else config.report.target_precision
    if not 0 < target <= 1:
        raise InvalidInput("--target-precision", "must be in (0, 1]")
    if args.signals is not None:
        if args.labels is None:
            raise InvalidInput("--labels", "a report on --signals needs --labels FILE")
        signals = args.signals / "signals.jsonl" if args.signals.is_dir() else args.signals
        inputs = from_files(signals, args.labels, since=since, until=until)
    else:
        stores = _stores(config)
        try:
            inputs = from_stores(stores, f"the store in {config.data_dir}", labels_path=args.labels,
                                 since=since, until=until)
        finally:
            for store in stores:
                store.close()
    report = build_report(inputs, target)
    page = render(report, args.out)
    out.write(json.dumps({"html": str(page), "signals": len(report.signals), "shadow": len(report.shadow),
                          "judged": len(inputs.judged), "labels": inputs.labels_read}) + "\n")
    return EXIT_OK


def _cmd_extract(args: argparse.Namespace, config: MarketGuardConfig,
                 out: TextIO, err: TextIO) -> int:
    model: type[Listing] | type[Review] = Listing if args.kind == "listing" else Review
    records: list[Listing | Review] = []
    failed = False
    for where, raw in _read_records(args.file):
        if isinstance(raw, dict) and args.kind == "listing":
            resolve_image_paths(raw, args.file.parent)
        try:
            records.append(parse_record(model, raw))
        except InvalidInput as exc:
            print(f"marketguard: invalid {args.kind} in {args.file}{where}: {exc}", file=err)
            failed = True
    if not records:
        return EXIT_ITEM_ERRORS if failed else EXIT_OK

    # Local image paths are what the CLI is for; the service's HTTP path keeps them off.
    signals_config = config.signals.model_copy(deep=True)
    signals_config.images.decode.allow_paths = True
    registry = build_registry(signals_config, config.data_dir,
                              fetch_url=url_fetcher_for(signals_config.images.decode))
    for rec in registry.extract_batch(args.kind, records, signals_only=True):
        for signal in rec.signals:
            out.write(json.dumps(signal.to_json_dict(), ensure_ascii=False) + "\n")
        for e in rec.errors:
            print(json.dumps({"entity_id": rec.entity_id, "error": e.to_dict()}), file=err)
            failed = True
    out.flush()
    return EXIT_ITEM_ERRORS if failed else EXIT_OK


def _cmd_batch(args: argparse.Namespace, config: MarketGuardConfig,
               out: TextIO, err: TextIO) -> int:
    from serving.batch.job import BatchRequest, run_batch

    logging.getLogger("serving").setLevel(logging.INFO)
    summary = run_batch(BatchRequest(args.kind, args.input, args.out, args.address, args.restart,
                                     args.progress, args.labels), config)
    result = {"out": str(args.out), "rows": summary["rows"], "accepted": summary["accepted"],
              "rejected": summary["rejected"], "pairs": summary["pairs"], "clusters": summary["clusters"],
              "signals": summary["signals"]}
    if args.publish:
        from serving.sinks.batch_publish import publish_run

        result["published"] = publish_run(args.out, config)
    out.write(json.dumps(result) + "\n")
    out.flush()
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace, config: MarketGuardConfig,
               out: TextIO, err: TextIO) -> int:
    from serving.deployments.run import serve_forever

    updates: dict[str, Any] = {}
    if args.host is not None:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    config = config.model_copy(update={"service": config.service.model_copy(update=updates)})
    logging.getLogger("marketguard").setLevel(logging.INFO)
    return serve_forever(config, demo=args.demo, from_batch=args.from_batch)


def _cmd_reindex(args: argparse.Namespace, config: MarketGuardConfig,
                 out: TextIO, err: TextIO) -> int:
    from serving.scoring.reindex import reindex

    counts = reindex(config)
    out.write(json.dumps(counts, sort_keys=True) + "\n")
    return EXIT_OK


def _cmd_bank_import(args: argparse.Namespace, config: MarketGuardConfig,
                     out: TextIO, err: TextIO) -> int:
    from serving.bank_command import import_bank

    result = import_bank(config, args.bank, args.file, args.kind, args.modality)
    out.write(json.dumps(result) + "\n")
    return EXIT_OK


def _cmd_bank_export(args: argparse.Namespace, config: MarketGuardConfig,
                     out: TextIO, err: TextIO) -> int:
    from serving.bank_command import export_bank

    out.write(json.dumps(export_bank(config, args.bank, args.file, args.kind)) + "\n")
    return EXIT_OK


def _cmd_sinks_replay(args: argparse.Namespace, config: MarketGuardConfig,
                      out: TextIO, err: TextIO) -> int:
    from serving.deployments.catalogue import open_store
    from serving.sinks.batch_publish import OUTBOX
    from serving.sinks.publisher import sink_names
    from serving.store.sql import SqlSignalStore
    from serving.store.sqlite import SqliteSignalStore

    shards = config.service.catalogue.shards
    opened: list[SqlSignalStore]
    if args.run is not None:
        path = args.run / OUTBOX
        opened = [SqliteSignalStore(path, sinks=sink_names(config.sinks))] if path.exists() else []
    else:
        opened = [open_store(config, shard, shards, exclusive=False) for shard in range(shards)]
    replayed = 0
    for store in opened:
        try:
            # a run's next --publish delivers them (marked in the replay's own transaction)
            mark = {"published": ""} if args.run is not None else None
            replayed += store.replay_dead_letters(args.sink, mark)
        finally:
            store.close()
    out.write(json.dumps({"replayed": replayed}) + "\n")
    return EXIT_OK


def _read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, raw_record)`` from a JSON object, a JSON array or a JSONL file."""
    try:
        size = path.stat().st_size
        if size > _MAX_INPUT_BYTES:
            raise InvalidInput("FILE", f"{path} is over {_MAX_INPUT_BYTES} bytes", "too_large")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput("FILE", f"{path}: no such file", "not_found") from None
    except IsADirectoryError:
        raise InvalidInput("FILE", f"{path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise InvalidInput("FILE", f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput("FILE", f"cannot read {path}: {exc.strerror}") from None
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path, text)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole_err:
        if not _looks_like_jsonl(text):
            raise InvalidInput("FILE", f"{path} is not valid JSON: {whole_err}") from None
        yield from _read_jsonl(path, text)
        return
    if isinstance(data, list):
        for i, item in enumerate(data):
            yield f" (item {i})", item
    else:
        yield "", data


def _looks_like_jsonl(text: str) -> bool:
    """Several lines, the first of which is a whole JSON value on its own."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
    except json.JSONDecodeError:
        return False
    return True


def _read_jsonl(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    # Split on "\n" only: str.splitlines() would also split on U+2028 inside strings.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f" (line {n})", json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput("FILE", f"{path} line {n} is not valid JSON: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
