"""Batch scoring of files with the served model's contract and answers (`make score`).

    python -m model_store.score --input IN --output OUT [--model TAG|bundle.zip] [--explain]
        [--workers N] [--id-column C] [--max-reject-rate R] [--range-check warn|reject|off]
        [--format parquet|csv] [--spark] [--export-model FILE]

IN is a CSV or Parquet file, a directory of them, or an s3:// prefix; OUT a directory (local or
s3://) that gets one output part per input part, `_rejects.csv` (file, row, field, reason, value)
and `_parts/` (what each part was scored from: the resume manifests). Input files are cut into
parts (CSV: ~PART_BYTES byte ranges at line ends; Parquet: row groups) scored by a pool of
--workers processes, each streaming its part in bounded-memory batches (model_store/scoring.py
validates and answers) and writing it under a temporary name, renamed when complete. A re-run
skips every part already written for the same input part, model version and options.
Exit status: 0 done, 1 more rejects than --max-reject-rate, 2 input refused before scoring.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .bundle import ModelContractError, bundle_from_bytes, export_bundle, read_manifest
from .scoring import REJECT_SCHEMA, ScoreError, Scorer, empty_table, explaining_scorer

PART_BYTES = 8 << 20  # CSV bytes per part: the unit of parallel work, progress and resume
BLOCK_BYTES = 4 << 20  # CSV bytes parsed at a time inside a part: bounds a worker's memory
PARQUET_BATCH_ROWS = 65_536
PARQUET_PART_ROWS = 500_000  # row groups are grouped into parts of about this many rows
INPUT_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
EXIT_TOO_MANY_REJECTS = 1
EXIT_REFUSED = 2


@dataclasses.dataclass(frozen=True)
class Part:
    path: str  # the input file, as its filesystem names it
    fmt: str  # "csv" or "parquet"
    index: int  # this part's number within its file
    start: int  # csv: first byte; parquet: first row group
    end: int  # csv: end byte; parquet: end row group
    first_row: int  # parquet: rows before this part in its file (csv: unknown until scored, -1)
    weight: int  # bytes, for progress
    header: tuple[str, ...]  # the file's column names
    version: str  # the file's size and modification time: a changed file is scored again

    @property
    def name(self) -> str:
        digest = hashlib.sha256(self.path.encode()).hexdigest()[:8]
        stem = os.path.basename(self.path).rsplit(".", 1)[0]
        return f"{stem}-{digest}-{self.index:05d}"


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a local path or a URI (s3://bucket/prefix honours AWS_ENDPOINT_URL)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        bucket_path = uri[len("s3://"):]
        return pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"],
                                 region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1")), bucket_path  # fmt: skip
    return pafs.FileSystem.from_uri(uri)


def input_files(fs: pafs.FileSystem, path: str) -> list[tuple[str, str, pafs.FileInfo]]:
    """(path, format, info) of every CSV/Parquet file at `path` (a file, a directory, a prefix), sorted."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ScoreError(f"{path}: no such file or directory")
    infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(path, recursive=True))
    found = []
    for i in sorted(infos, key=lambda i: i.path):
        base = os.path.basename(i.path)
        fmt = INPUT_SUFFIXES.get(os.path.splitext(base)[1].lower())
        if i.type == pafs.FileType.File and fmt and not base.startswith(("_", ".")):
            found.append((i.path, fmt, i))
    if not found:
        raise ScoreError(f"{path}: no .csv or .parquet file to score")
    return found


def csv_header(fs: pafs.FileSystem, path: str) -> tuple[tuple[str, ...], int]:
    """A CSV's column names and the byte length of its header line."""
    with fs.open_input_file(path) as f:
        head = f.read(1 << 20)
    line = head.split(b"\n", 1)[0]
    if not line.strip():
        raise ScoreError(f"{path}: empty, or no header row")
    return tuple(next(csv.reader([line.decode("utf-8-sig").rstrip("\r")]))), len(line) + 1


def csv_parts(fs: pafs.FileSystem, path: str, info: pafs.FileInfo, version: str, part_bytes: int = PART_BYTES) -> list[Part]:
    """Byte ranges cut at line ends. Like Arrow's own parallel CSV reader, this assumes no quoted
    value holds a newline (numbers and category names do not)."""
    header, start = csv_header(fs, path)
    bounds = [0]
    with fs.open_input_file(path) as f:
        target = start + part_bytes
        while target < info.size:
            newline = next_line_start(f, target)
            if newline >= info.size:
                break
            bounds.append(newline)
            target = newline + part_bytes
    bounds.append(info.size)
    return [Part(path, "csv", k, a, b, -1, b - a, header, version) for k, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a]


def next_line_start(f: Any, offset: int, probe: int = 64 << 10) -> int:
    """The offset just after the first newline at or after `offset` (the file's size if none)."""
    f.seek(offset)
    while chunk := f.read(probe):
        newline = chunk.find(b"\n")
        if newline >= 0:
            return offset + newline + 1
        offset += len(chunk)
    return offset


def parquet_parts(fs: pafs.FileSystem, path: str, info: pafs.FileInfo, version: str) -> list[Part]:
    try:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
    except (pa.ArrowInvalid, OSError) as exc:
        raise ScoreError(f"{path}: not a readable Parquet file ({exc})") from None
    header = tuple(meta.schema.to_arrow_schema().names)
    parts, group, first, rows, weight = [], 0, 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        weight += meta.row_group(g).total_byte_size
        if rows >= PARQUET_PART_ROWS or g == meta.num_row_groups - 1:
            parts.append(Part(path, "parquet", len(parts), group, g + 1, first, max(weight, 1), header, version))
            group, first, rows, weight = g + 1, first + rows, 0, 0
    return parts


def plan(fs: pafs.FileSystem, path: str, part_bytes: int = PART_BYTES) -> list[Part]:
    parts: list[Part] = []
    for file_path, fmt, info in input_files(fs, path):
        version = f"{info.size}:{info.mtime_ns}"
        parts += csv_parts(fs, file_path, info, version, part_bytes) if fmt == "csv" else parquet_parts(fs, file_path, info, version)
    return parts


def input_schema(scorer: Scorer, part: Part) -> pa.Schema:
    """The Arrow types a part is read as: CSV numbers float64, categories and the id column text."""
    kinds = {f.name: f.kind for f in scorer.schema.features}
    return pa.schema([(name, pa.float64() if kinds.get(name, "categorical") != "categorical" else pa.string()) for name in part.header])


# -- one part, in a worker process ------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def init_worker(bundle_bytes: bytes, range_check: str, id_column: str | None, explain: bool, in_uri: str, out_uri: str) -> None:
    pa.set_cpu_count(1)  # one process per core already
    pa.set_io_thread_count(2)
    try:
        bundle = bundle_from_bytes(bundle_bytes)
    except ModelContractError as exc:  # raised by score_part: the run's error, not a dead pool's
        _WORKER["error"] = exc
        return
    _WORKER.update(scorer=explaining_scorer(bundle, range_check, id_column, explain), in_fs=filesystem(in_uri)[0], out=filesystem(out_uri))


def csv_batches(fs: pafs.FileSystem, part: Part, types: pa.Schema | None) -> Iterator[pa.RecordBatch]:
    with fs.open_input_file(part.path) as f:
        f.seek(part.start)
        data = f.read(part.end - part.start)
    read = pacsv.ReadOptions(column_names=list(part.header), skip_rows=1 if part.start == 0 else 0, block_size=BLOCK_BYTES,
                             use_threads=False)  # fmt: skip
    column_types = {name: types.field(name).type for name in part.header} if types is not None else {n: pa.string() for n in part.header}
    convert = pacsv.ConvertOptions(column_types=column_types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True)
    yield from pacsv.open_csv(pa.BufferReader(data), read_options=read, convert_options=convert)


def parquet_batches(fs: pafs.FileSystem, part: Part) -> Iterator[pa.RecordBatch]:
    with fs.open_input_file(part.path) as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=range(part.start, part.end))


def score_part(part: Part, key: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Score one part into OUT/<part>.<fmt> (written as a temporary file, renamed when complete)."""
    if "error" in _WORKER:
        raise _WORKER["error"]
    scorer: Scorer = _WORKER["scorer"]
    out_fs, out_dir = _WORKER["out"]
    target = f"{out_dir}/{part.name}.{fmt}"
    temporary = f"{out_dir}/_tmp/{part.name}.{os.getpid()}.{fmt}"
    types = input_schema(scorer, part)
    try:
        try:
            done = _write(scorer, part, types, temporary, out_fs, fmt, typed=True)
        except pa.ArrowInvalid:
            if part.fmt != "csv":
                raise
            # A cell that is not a number stops Arrow's typed CSV reader: read the part as text
            # instead, so each bad cell becomes a reject naming its row, field and value.
            done = _write(scorer, part, types, temporary, out_fs, fmt, typed=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ScoreError(f"{part.path}: cannot be read ({str(exc).splitlines()[0][:300]})") from None
    rows, rejects, out_of_range = done
    out_fs.move(temporary, target)
    reject_table = pa.Table.from_pylist([dict(zip(REJECT_SCHEMA.names, r)) for r in rejects], schema=REJECT_SCHEMA) if rejects else empty_table(REJECT_SCHEMA)
    _write_atomically(out_fs, f"{out_dir}/_parts/{part.name}.rejects.parquet", lambda s: pq.write_table(reject_table, s))
    manifest = {**key, "rows": rows, "rejected": len({r[0] for r in rejects}), "out_of_range": out_of_range.tolist()}
    _write_atomically(out_fs, f"{out_dir}/_parts/{part.name}.json", lambda s: s.write(json.dumps(manifest).encode()))
    return manifest


def _write(scorer: Scorer, part: Part, types: pa.Schema, path: str, fs: pafs.FileSystem, fmt: str, typed: bool):
    in_fs = _WORKER["in_fs"]
    batches = csv_batches(in_fs, part, types if typed else None) if part.fmt == "csv" else parquet_batches(in_fs, part)
    rows, rejects, out_of_range = 0, [], np.zeros(scorer.schema.n_features, dtype=np.int64)
    first = 0 if part.fmt == "csv" else part.first_row
    with fs.open_output_stream(path) as stream:
        writer, header = None, True
        for batch in batches:
            scored = scorer.score(batch, first + rows)
            rows += scored.rows
            rejects += scored.rejects
            out_of_range += scored.out_of_range
            if fmt == "parquet":
                # Dictionary-encoding is tried on every column by default; only text gains from it (half the write time)
                writer = writer or pq.ParquetWriter(stream, scored.table.schema,
                                                    use_dictionary=[f.name for f in scored.table.schema if pa.types.is_string(f.type)])
                writer.write_table(scored.table)
            else:
                stream.write(csv_text(scored.table, header))
                header = False
        if rows == 0:  # an empty part still gets its columns
            empty = empty_table(scorer.output_schema(types))
            pq.write_table(empty, stream) if fmt == "parquet" else stream.write(csv_text(empty, True))
        if writer is not None:
            writer.close()
    return rows, rejects, out_of_range


def csv_text(table: pa.Table, header: bool) -> bytes:
    """CSV output: list and struct answer fields (probabilities, contributions) as their JSON text."""
    import orjson

    columns = []
    for name, column in zip(table.schema.names, table.columns):
        if pa.types.is_list(column.type) or pa.types.is_struct(column.type):
            column = pa.array([orjson.dumps(v).decode() for v in column.to_pylist()], pa.string())
        columns.append(column)
    out = io.BytesIO()
    pacsv.write_csv(pa.Table.from_arrays(columns, names=table.schema.names), out, pacsv.WriteOptions(include_header=header))
    return out.getvalue()


def _write_atomically(fs: pafs.FileSystem, path: str, write: Any) -> None:
    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{os.getpid()}.tmp"
    with fs.open_output_stream(temporary) as stream:
        write(stream)
    fs.move(temporary, path)


# -- the run ----------------------------------------------------------------------------------

def part_key(part: Part, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    """What a part was scored from and with: an output part is reused only if all of it is the same."""
    return {"input": part.path, "input_version": part.version, "range": [part.start, part.end], "model": tag,
            "id_column": args.id_column, "range_check": args.range_check, "explain": args.explain, "format": args.format}  # fmt: skip


def done_before(fs: pafs.FileSystem, out_dir: str, part: Part, key: dict[str, Any], fmt: str) -> dict[str, Any] | None:
    try:
        with fs.open_input_stream(f"{out_dir}/_parts/{part.name}.json") as f:
            manifest = json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        return None
    if any(manifest.get(k) != v for k, v in key.items()):
        return None
    return manifest if fs.get_file_info(f"{out_dir}/{part.name}.{fmt}").type == pafs.FileType.File else None


def load_model(model: str | None) -> bytes:
    """An exported bundle file's bytes, or the store's model (a tag, default the tag policy) exported."""
    if model and (os.path.isfile(model) or "://" in model):
        fs, path = filesystem(model)
        with fs.open_input_stream(path) as f:
            return f.read()
    from .bundle import load_bundle

    return export_bundle(load_bundle(model))


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    bundle_bytes = load_model(args.model)
    # The manifest alone (no xgboost in this process): the workers load and check the booster, and
    # start a second sooner for it
    bundle = read_manifest(bundle_bytes)
    scorer = Scorer(bundle, args.range_check, args.id_column)
    in_fs, in_path = filesystem(args.input)
    parts = plan(in_fs, in_path, args.part_bytes)
    for part in parts:
        if part.index == 0:
            scorer.check_columns(part.path, pa.schema([(n, pa.string()) for n in part.header]) if part.fmt == "csv"
                                 else _parquet_schema(in_fs, part.path))  # fmt: skip
    out_fs, out_dir = filesystem(args.output)
    for sub in ("", "/_tmp", "/_parts"):
        out_fs.create_dir(out_dir + sub, recursive=True)
    manifests: dict[Part, dict[str, Any]] = {}
    todo = []
    for part in parts:
        key = part_key(part, bundle.tag, args)
        previous = done_before(out_fs, out_dir, part, key, args.format)
        if previous is not None:
            manifests[part] = previous
        else:
            todo.append((part, key))
    skipped = len(manifests)
    if not todo:
        bundle_from_bytes(bundle_bytes)  # the workers check it when there is work; a broken model is refused anyway
    with progress_bar(sum(p.weight for p in parts), sum(p.weight for p in manifests)) as advance:
        context = multiprocessing.get_context("spawn")  # XGBoost's OpenMP threads do not survive fork()
        init = (bundle_bytes, args.range_check, args.id_column, args.explain, args.input, args.output)
        with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context, initializer=init_worker, initargs=init) as pool:
            futures = {pool.submit(score_part, part, key, args.format): part for part, key in todo}
            for future in concurrent.futures.as_completed(futures):
                part = futures[future]
                manifests[part] = future.result()
                advance(part.weight, manifests[part]["rows"])
    out_fs.delete_dir_contents(out_dir + "/_tmp", missing_dir_ok=True)
    rows = sum(m["rows"] for m in manifests.values())
    rejected = sum(m["rejected"] for m in manifests.values())
    write_rejects(out_fs, out_dir, parts, manifests)
    seconds = time.monotonic() - started
    rate = rejected / rows if rows else 0.0
    out_of_range = np.sum([m["out_of_range"] for m in manifests.values()], axis=0)
    warned = "" if args.range_check != "warn" or not out_of_range.any() else (
        f"; out of range (counted, XGB_RANGE_CHECK=warn): "
        + ", ".join(f"{n} {c:,}" for n, c in zip(bundle.schema.feature_names, out_of_range.tolist()) if c))
    print(f"scored {rows - rejected:,} of {rows:,} rows with {bundle.tag} in {seconds:.1f} s ({rows / seconds:,.0f} rows/s, "
          f"{args.workers} workers): {len(parts)} part(s), {skipped} already done; rejected {rejected:,} ({rate:.2%}) -> "
          f"{args.output.rstrip('/')}/_rejects.csv{warned}", flush=True)  # fmt: skip
    if rate > args.max_reject_rate:
        print(f"score: {rate:.2%} of the rows were rejected, more than --max-reject-rate {args.max_reject_rate:.2%}", file=sys.stderr)
        return EXIT_TOO_MANY_REJECTS
    return 0


def _parquet_schema(fs: pafs.FileSystem, path: str) -> pa.Schema:
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).schema_arrow


def write_rejects(fs: pafs.FileSystem, out_dir: str, parts: list[Part], manifests: dict[Part, dict[str, Any]]) -> None:
    """OUT/_rejects.csv: every part's rejects, their rows numbered within the input file (1 = the first data row)."""
    tables, offset, current = [], 0, None
    for part in parts:
        if part.path != current:
            offset, current = 0, part.path
        with fs.open_input_file(f"{out_dir}/_parts/{part.name}.rejects.parquet") as f:
            table = pq.read_table(f)
        if table.num_rows:
            rows = pc.add(table.column("row"), offset if part.fmt == "csv" else 0)
            tables.append(pa.table({"file": pa.array([part.path] * table.num_rows), "row": rows, **{n: table.column(n) for n in REJECT_SCHEMA.names[1:]}}))
        offset += manifests[part]["rows"]
    empty = pa.schema([("file", pa.string())] + list(REJECT_SCHEMA))
    table = pa.concat_tables(tables) if tables else empty_table(empty)
    _write_atomically(fs, f"{out_dir}/_rejects.csv", lambda s: pacsv.write_csv(table, s))


class progress_bar:
    """rich's progress bar (rows, rows/s, ETA) on a terminal; nothing otherwise."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done, self.rows, self.started = total, done, 0, time.monotonic()
        self.progress = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("scoring"), BarColumn(), TaskProgressColumn(),
                                     TextColumn("{task.fields[rows]:,} rows  {task.fields[rate]:,.0f} rows/s"), TimeRemainingColumn(),
                                     transient=True)  # fmt: skip

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("score", total=self.total, completed=self.done, rows=0, rate=0.0)
        return self.advance

    def advance(self, weight: int, rows: int) -> None:
        self.rows += rows
        if self.progress is not None:
            self.progress.update(self.task, advance=weight, rows=self.rows, rate=self.rows / max(time.monotonic() - self.started, 1e-9))

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model_store.score", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--input", help="CSV or Parquet file, a directory of them, or an s3:// prefix")
    p.add_argument("--output", help="output directory, local or s3://")
    p.add_argument("--model", help="model tag in the store (default: MODEL_TAG or the newest), or an exported bundle file")
    p.add_argument("--explain", action="store_true", help="add /explain's TreeSHAP fields (explained_class, base_value, margin, contributions)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="scoring processes (default: the CPU count)")
    p.add_argument("--id-column", help="write this input column (it may be the only non-feature column) instead of all input columns")
    p.add_argument("--max-reject-rate", type=float, default=0.0, help="exit 1 when a larger share of rows is rejected (default 0)")
    p.add_argument("--range-check", choices=("warn", "reject", "off"), default=os.environ.get("XGB_RANGE_CHECK", "warn"),
                   help="the range policy, as the service's XGB_RANGE_CHECK (default: its value, else warn)")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="output format")
    p.add_argument("--part-bytes", type=int, default=PART_BYTES, help="CSV bytes per part (the unit of parallel work and resume)")
    p.add_argument("--spark", action="store_true", help="score with Spark (model_store/score_spark.py) instead of local processes")
    p.add_argument("--export-model", metavar="FILE", help="write the model (--model, default the newest) as a bundle file and exit")
    args = p.parse_args(argv)
    if not args.export_model and not (args.input and args.output):
        p.error("--input and --output are required (or --export-model FILE)")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.export_model:
            data = load_model(args.model)
            fs, path = filesystem(args.export_model)
            _write_atomically(fs, path, lambda s: s.write(data))
            print(f"exported {bundle_from_bytes(data).tag} to {args.export_model} ({len(data):,} bytes)")
            return 0
        if args.spark:
            from .score_spark import run_cli

            return run_cli(args)
        return run(args)
    except (ScoreError, ModelContractError) as exc:
        print(f"score: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
