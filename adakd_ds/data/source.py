"""Where the records come from: a local .jsonl/.json/.parquet file or a hub dataset, checked before use.

datasets' own errors for a bad JSON line or a missing key are unreadable Arrow tracebacks, so local JSON files are first
read with json.loads line by line (cheap: about a second per 100k records) and every record is checked for the fields
of its format; the error then names the file and line. Parquet and hub datasets are checked record by record after
loading, by record index.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets

from adakd_ds.config.schema import DataConfig, DataFormat
from adakd_ds.data.errors import DataError
from adakd_ds.data.formats import check_record, resolve_format


class SourceKind(str, enum.Enum):
    JSONL = "jsonl"
    JSON = "json"
    PARQUET = "parquet"
    HUB = "hub"


EXTENSIONS: dict[str, SourceKind] = {
    ".jsonl": SourceKind.JSONL,
    ".json": SourceKind.JSON,
    ".parquet": SourceKind.PARQUET,
}
# The datasets builder that reads each local kind.
BUILDERS: dict[SourceKind, str] = {SourceKind.JSONL: "json", SourceKind.JSON: "json", SourceKind.PARQUET: "parquet"}


def source_kind(source: str) -> SourceKind:
    """The kind of a data source, by its extension; anything that is not a local path is a hub name."""
    if not source:
        raise DataError("data.source is empty: set it to a .jsonl/.json/.parquet file or a hub dataset name")
    ext = os.path.splitext(source)[1].lower()
    if ext in EXTENSIONS:
        if not os.path.isfile(source):
            raise DataError(f"{source}: data file not found")
        return EXTENSIONS[ext]
    if os.path.exists(source):
        raise DataError(f"{source}: unsupported data file type (use one of: {', '.join(EXTENSIONS)})")
    return SourceKind.HUB


@dataclass
class RawData:
    """The loaded, checked records, their format, and how to name record i in an error message."""

    dataset: datasets.Dataset
    format: DataFormat
    locate: Callable[[int], str]


def _check_all(records: Iterable[tuple[str, Any]], fmt: DataFormat, where: str) -> DataFormat:
    """Check every (location, record); the first record decides an AUTO format. Returns the format."""
    resolved: DataFormat | None = None
    for location, record in records:
        if resolved is None:
            if not isinstance(record, Mapping):
                raise DataError(f"{location}: expected a JSON object, got {type(record).__name__}")
            try:
                resolved = resolve_format(fmt, record)
            except DataError as exc:
                raise DataError(f"{location}: {exc}") from None
        problem = check_record(record, resolved)
        if problem:
            raise DataError(f"{location}: {problem} (data format '{resolved.value}')")
    if resolved is None:
        raise DataError(f"{where}: the dataset is empty")
    return resolved


def _decode_line(raw: bytes, path: str, lineno: int) -> str:
    """UTF-8 text of one line; a bad byte is named by file, line and column (not a buffer offset)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        ) from None


def _read_utf8(path: str) -> str:
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})") from None


def _jsonl_records(path: str, lines_out: list[int]) -> Iterable[tuple[str, Any]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode_line(raw, path, lineno)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
            lines_out.append(lineno)
            yield f"{path}:{lineno}", record


def _prevalidate_json_file(path: str, fmt: DataFormat) -> tuple[DataFormat, Callable[[int], str]]:
    """Check a local .json/.jsonl file; return the format and a record-index -> 'file:line' (or record) namer."""
    kind = EXTENSIONS[os.path.splitext(path)[1].lower()]
    if kind is SourceKind.JSON:
        text = _read_utf8(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # "Extra data" means JSON Lines in a .json file: read it as such below
                raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        else:
            if not isinstance(data, list):
                raise DataError(f"{path}: the top level must be a list of records (or use JSON Lines)")
            resolved = _check_all(((f"{path}: record {i}", r) for i, r in enumerate(data)), fmt, path)
            return resolved, lambda i: f"{path}: record {i}"
    lines: list[int] = []
    resolved = _check_all(_jsonl_records(path, lines), fmt, path)
    return resolved, lambda i: f"{path}:{lines[i]}" if 0 <= i < len(lines) else f"{path}: record {i}"


def _iter_dataset(ds: datasets.Dataset, locate: Callable[[int], str]) -> Iterable[tuple[str, Any]]:
    index = 0
    for batch in ds.iter(batch_size=1024):
        for values in zip(*batch.values(), strict=True):
            yield locate(index), dict(zip(batch.keys(), values, strict=True))
            index += 1


def _split_name(split: str) -> str:
    """'train[:90%]' -> 'train': a local file becomes the one split it is asked for."""
    return split.split("[", 1)[0].strip() or "train"


def _load(source: str, kind: SourceKind, split: str, cache_dir: str | None) -> datasets.Dataset:
    try:
        if kind is SourceKind.HUB:
            ds = datasets.load_dataset(source, split=split, cache_dir=cache_dir)
        else:
            ds = datasets.load_dataset(
                BUILDERS[kind], data_files={_split_name(split): source}, split=split, cache_dir=cache_dir
            )
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; one readable line is what the user needs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(f"{source}: datasets could not load split '{split}': {type(exc).__name__}: {first}") from None
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{source}: split '{split}' did not give one dataset (got {type(ds).__name__})")
    return ds


def load_source(source: str, fmt: DataFormat, split: str, cache_dir: str | None) -> RawData:
    """Load and check the records of `source`; every problem is a one-line DataError that names the location."""
    kind = source_kind(source)
    sliced = split.strip() != _split_name(split)
    where = f"{source} [{split}]" if kind is SourceKind.HUB or sliced else source

    def by_index(i: int) -> str:
        return f"{where}: record {i}"

    if kind in (SourceKind.JSON, SourceKind.JSONL):
        checked_fmt, by_line = _prevalidate_json_file(source, fmt)
        # A sliced split ('train[10:]') shifts record indices away from file lines, so name records by index then.
        return RawData(_load(source, kind, split, cache_dir), checked_fmt, by_index if sliced else by_line)
    ds = _load(source, kind, split, cache_dir)
    return RawData(ds, _check_all(_iter_dataset(ds, by_index), fmt, where), by_index)


# Files up to this size are hashed whole; larger ones by size plus their first and last HASH_SAMPLE bytes.
FULL_HASH_LIMIT = 256 * 1024 * 1024
HASH_SAMPLE = 16 * 1024 * 1024
FINGERPRINT_VERSION = "adakd-data-v1"


def _file_digest(path: str) -> str:
    size = os.path.getsize(path)
    h = hashlib.sha256(f"size={size};".encode())
    with open(path, "rb") as fh:
        if size <= FULL_HASH_LIMIT:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(HASH_SAMPLE))
            fh.seek(size - HASH_SAMPLE)
            h.update(fh.read(HASH_SAMPLE))
    return h.hexdigest()


def dataset_fingerprint(data_cfg: DataConfig, source: str | None = None, split: str | None = None) -> str:
    """A hash of the data's CONTENT and the settings that shape samples, for checkpoints to detect changed data.

    Content, not path or mtime: a copy of the same file on another node resumes without a false alarm, while an
    edited file (or another format/split/length setting) gives another fingerprint. Hub datasets are named, not hashed.
    """
    source = source or data_cfg.source
    split = split or data_cfg.split
    kind = source_kind(source)
    content = f"hub:{source}" if kind is SourceKind.HUB else f"file:{_file_digest(source)}"
    settings = {
        "version": FINGERPRINT_VERSION,
        "content": content,
        "format": DataFormat(data_cfg.format).value,
        "split": split,
        "max_prompt_len": data_cfg.max_prompt_len,
        "max_len": data_cfg.max_len,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def precheck_source(source: str, fmt: DataFormat) -> DataFormat | None:
    """The cheap check a run does before any model is built: the file exists, and a local .json/.jsonl file is
    read line by line (UTF-8, JSON, the fields of its format). Returns the detected format, or None for parquet
    and hub data, which are only checked when datasets loads them."""
    kind = source_kind(source)
    if kind in (SourceKind.JSON, SourceKind.JSONL):
        return _prevalidate_json_file(source, fmt)[0]
    return None
