"""Read CSV and Parquet files in chunks, with their line numbers and raw lines.

CSV files are sniffed for encoding, delimiter and header, then parsed by pandas'
C engine in chunks, so a file larger than memory is never loaded whole. The raw
text of a quarantined row is read back from the file's bytes by line number, so
the quarantine file contains the row exactly as written.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import os
import queue
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from charset_normalizer import from_bytes

from schemas import kernels
from schemas.errors import EmptyCohortError, UnreadableFileError
from schemas.model import (
    BooleanColumn,
    CategoricalColumn,
    DateColumn,
    IdentifierColumn,
    Schema,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

SNIFF_BYTES = 64 * 1024
PARSE_BLOCK_BYTES = 2 * 1024 * 1024
DEFAULT_CHUNK_ROWS = 50_000
_DELIMITERS = ",;\t|"
_BLOCK_BYTES = 16 * 1024 * 1024
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True)
class CsvOptions:
    """How to parse a CSV file; ``None`` means detect from the file."""

    delimiter: str | None = None
    encoding: str | None = None
    header: bool | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS


@dataclass
class RawLines:
    """The bytes of a chunk's lines, as written in the file."""

    block: bytes | bytearray
    starts: np.ndarray
    ends: np.ndarray

    def rows(self, positions: np.ndarray) -> list[bytes]:
        """Return the lines at ``positions`` without their line endings."""
        block = self.block
        return [
            bytes(block[start:end]).rstrip(b"\r")
            for start, end in zip(
                self.starts[positions].tolist(),
                self.ends[positions].tolist(),
                strict=True,
            )
        ]


@dataclass
class Chunk:
    """Parsed rows of one chunk and their line numbers.

    ``frame`` contains the schema columns as pandas read them. A chunk from the
    compiled parse has ``numbers`` instead: per column, its float values and
    the kind of each cell (``kernels.CELL_NUMBER``, ``CELL_MISSING`` or
    ``CELL_WRONG``), and ``raw``, its lines as written.
    """

    frame: pd.DataFrame | None
    lines: np.ndarray
    original: pd.DataFrame | None = None
    numbers: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    raw: RawLines | None = None


@dataclass
class TableSource:
    """An opened input file: its layout and an iterator over its chunks."""

    path: Path
    kind: str
    encoding: str | None
    delimiter: str | None
    header: bool
    file_columns: tuple[str, ...]
    extra_columns: tuple[str, ...] = ()
    skip_initial_space: bool = False
    estimated_rows: int | None = None
    frame: pd.DataFrame | None = field(default=None, repr=False)
    _temporary: Path | None = field(default=None, repr=False)

    def close(self) -> None:
        """Delete the UTF-8 copy made for a UTF-16 or UTF-32 file, if any."""
        if self._temporary is not None:
            self._temporary.unlink(missing_ok=True)
            self._temporary = None

    @property
    def text_path(self) -> Path:
        """File that pandas parses: the input, or its UTF-8 copy."""
        return self._temporary or self.path


def detect_encoding(path: Path, sample: bytes) -> str:
    """Return the encoding of a text file from its byte-order mark or content."""
    for bom, name in _BOMS:
        if sample.startswith(bom):
            return name
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still UTF-8.
        if exc.start >= len(sample) - 3 and len(sample) == SNIFF_BYTES:
            return "utf-8"
    matches = list(from_bytes(sample))
    if not matches:
        raise UnreadableFileError(
            path,
            "the text encoding could not be detected",
            "convert the file to UTF-8 or pass the encoding explicitly",
        )
    # Single-byte code pages often fit a short sample equally well (cp1250 and
    # cp1252 differ in a few letters). Among the best fits, prefer cp1252, the
    # usual encoding of spreadsheet exports in Western European locales.
    lowest = min(match.chaos for match in matches)
    tied = [match.encoding for match in matches if match.chaos == lowest]
    encoding = "cp1252" if "cp1252" in tied else str(tied[0])
    logger.warning(
        "Guessed encoding %s for %s (equally likely: %s); pass the encoding "
        "explicitly if text values look wrong",
        encoding,
        path,
        ", ".join(tied),
    )
    return encoding


def detect_delimiter(sample_text: str) -> str:
    """Return the field delimiter of a CSV sample; a comma if none is clear."""
    lines = sample_text.splitlines()[:50]
    if len(lines) > 1 and len(sample_text) >= SNIFF_BYTES:
        lines = lines[:-1]
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines), delimiters=_DELIMITERS)
    except csv.Error:
        return ","
    return dialect.delimiter


def open_csv(path: Path, schema: Schema, options: CsvOptions) -> TableSource:
    """Sniff a CSV file's layout and map its columns to the schema."""
    encoding, sample, temporary = _read_sample(path, options.encoding)
    try:
        sample_text = sample.decode(encoding, errors="ignore").lstrip("\ufeff")
        delimiter = options.delimiter or detect_delimiter(sample_text)
        header, file_columns = _column_layout(
            path, schema, _first_row(sample_text, delimiter), options.header
        )
        # Skipping spaces after each delimiter slows pandas' tokenizer by about
        # 40%. Numbers parse with surrounding spaces anyway and the checks trim
        # text, so the skip is needed only for a quoted field after a space.
        skip_initial_space = f"{delimiter} " in sample_text
        estimated_rows = _estimate_rows(temporary or path, sample)
    except BaseException:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise
    extra = tuple(name for name in file_columns if name not in schema.column_names)
    logger.info(
        "Reading %s as CSV (encoding %s, delimiter %r, header %s)",
        path,
        encoding,
        delimiter,
        header,
    )
    return TableSource(
        path=path,
        kind="csv",
        encoding=encoding,
        delimiter=delimiter,
        header=header,
        file_columns=file_columns,
        extra_columns=extra,
        skip_initial_space=skip_initial_space,
        estimated_rows=estimated_rows,
        _temporary=temporary,
    )


def _estimate_rows(path: Path, sample: bytes) -> int | None:
    """Estimate the file's lines from the line length in its first bytes."""
    lines = sample.count(b"\n")
    if lines == 0:
        return None
    return int(path.stat().st_size * lines / len(sample)) + 1


def _read_sample(
    path: Path, declared_encoding: str | None
) -> tuple[str, bytes, Path | None]:
    """Return the encoding to parse with, the first bytes, and a UTF-8 copy.

    UTF-16 and UTF-32 files are copied to a temporary UTF-8 file, because the
    line reader and pandas' C parser need newline bytes that are whole characters.
    """
    try:
        with path.open("rb") as handle:
            sample = handle.read(SNIFF_BYTES)
    except OSError as exc:
        raise UnreadableFileError(
            path, f"cannot be opened ({exc.strerror})", "check the path and rights"
        ) from exc
    if not sample.strip():
        raise EmptyCohortError(
            path, "the file is empty", "export the cohort again with its rows"
        )
    encoding = declared_encoding or detect_encoding(path, sample)
    try:
        codec = codecs.lookup(encoding).name
    except LookupError as exc:
        raise UnreadableFileError(
            path,
            f"unknown encoding {encoding!r}",
            "pass a Python codec name such as utf-8 or cp1252",
        ) from exc
    if codec == "utf-8" and sample.startswith(codecs.BOM_UTF8):
        # A declared UTF-8 file with a byte-order mark: drop the mark, so that it
        # does not become part of the first column name.
        encoding = "utf-8-sig"
    if not codec.startswith(("utf-16", "utf-32")):
        return encoding, sample, None
    temporary = _transcode_to_utf8(path, encoding)
    with temporary.open("rb") as handle:
        return "utf-8", handle.read(SNIFF_BYTES), temporary


def _column_layout(
    path: Path, schema: Schema, first_fields: list[str], header: bool | None
) -> tuple[bool, tuple[str, ...]]:
    """Return whether the file has a header, and its column names in order."""
    if header is None:
        header = bool(set(first_fields) & set(schema.column_names))
    if not header:
        if len(first_fields) != len(schema.column_names):
            raise UnreadableFileError(
                path,
                f"the file has no header and {len(first_fields)} fields per row, "
                f"but the schema declares {len(schema.column_names)} columns in "
                "order",
                "add a header row naming the columns, or pass the right delimiter",
            )
        return False, schema.column_names
    file_columns = tuple(first_fields)
    duplicated = sorted(
        {name for name in file_columns if file_columns.count(name) > 1}
        & set(schema.column_names)
    )
    if duplicated:
        raise UnreadableFileError(
            path,
            f"the header names columns {duplicated} more than once",
            "rename or remove the repeated columns",
        )
    return True, file_columns


def _first_row(sample_text: str, delimiter: str) -> list[str]:
    reader = csv.reader(sample_text.splitlines()[:1], delimiter=delimiter)
    row = next(reader, [])
    return [cell.strip() for cell in row]


def _transcode_to_utf8(path: Path, encoding: str) -> Path:
    descriptor, name = tempfile.mkstemp(suffix=".csv", prefix="healthfed-utf8-")
    try:
        with (
            path.open("r", encoding=encoding, newline="") as source,
            os.fdopen(descriptor, "w", encoding="utf-8", newline="") as target,
        ):
            while block := source.read(_BLOCK_BYTES):
                target.write(block)
    except (UnicodeDecodeError, UnicodeError) as exc:
        Path(name).unlink(missing_ok=True)
        raise UnreadableFileError(
            path,
            f"cannot be decoded as {encoding}",
            "pass the file's real encoding with --encoding",
        ) from exc
    return Path(name)


def string_columns(schema: Schema) -> dict[str, type[str]]:
    """Return the columns that pandas must read as text instead of inferring."""
    text_columns: dict[str, type[str]] = {}
    for column in schema.columns:
        if isinstance(column, IdentifierColumn | DateColumn):
            text_columns[column.name] = str
        elif isinstance(column, CategoricalColumn) and not column.numeric_codes():
            text_columns[column.name] = str
        elif isinstance(column, BooleanColumn) and any(
            isinstance(v, str) for v in (*column.true_values, *column.false_values)
        ):
            text_columns[column.name] = str
    return text_columns


def text_missing_markers(schema: Schema) -> dict[str, list[str]]:
    """Return the text markers of missing values per column, for pandas' parser."""
    shared = [str(marker) for marker in schema.missing_values]
    markers: dict[str, list[str]] = {}
    for column in schema.columns:
        own = [m for m in column.missing_values if isinstance(m, str)]
        markers[column.name] = shared + own
    return markers


def iter_csv_chunks(
    source: TableSource, schema: Schema, chunk_rows: int
) -> Iterator[Chunk]:
    """Yield the file's rows in chunks with their 1-based line numbers.

    Raises:
        UnreadableFileError: the file cannot be decoded or tokenized, for example
            a row with more fields than the header.

    """
    present = [name for name in schema.column_names if name in source.file_columns]
    text_columns = {
        name: kind for name, kind in string_columns(schema).items() if name in present
    }
    markers = {
        name: tokens
        for name, tokens in text_missing_markers(schema).items()
        if name in present
    }
    first_line = 2 if source.header else 1
    try:
        reader = pd.read_csv(
            source.text_path,
            sep=source.delimiter,
            encoding=source.encoding,
            header=0 if source.header else None,
            names=None if source.header else list(source.file_columns),
            dtype=text_columns,
            na_values=markers,
            keep_default_na=False,
            skip_blank_lines=False,
            skipinitialspace=source.skip_initial_space,
            chunksize=chunk_rows,
            # Infer each column's type once per chunk, so a column that turns to
            # text part-way through a chunk is text for the whole chunk rather
            # than a mix of numbers and text.
            low_memory=False,
            engine="c",
        )
        with reader:
            for frame in reader:
                if not isinstance(frame.index, pd.RangeIndex):
                    # pandas turns the first field into the row index when every
                    # row has one field more than the header, shifting columns.
                    raise UnreadableFileError(
                        source.path,
                        "every row has more fields than the header",
                        "add the missing column name to the header, or remove "
                        "the trailing delimiter from each row",
                    )
                if source.header:
                    frame.columns = [str(name).strip() for name in frame.columns]
                if list(frame.columns) != present:
                    frame = frame[present]
                lines = frame.index.to_numpy(dtype=np.int64) + first_line
                yield Chunk(frame=frame, lines=lines)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UnreadableFileError(
            source.path,
            f"cannot be parsed as CSV ({_first_line_of(exc)})",
            "check the delimiter, quoting and encoding; every row needs the same "
            "number of fields as the header",
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise EmptyCohortError(
            source.path, "the file has no rows", "export the cohort with its rows"
        ) from exc


class CompiledParseUnsupported(Exception):
    """The file has a feature that only pandas' parser handles."""


_ASCII_PROBE = '0123456789+-.eE,;|\t ?\r\n"NA'


def compiled_parse_supported(source: TableSource, schema: Schema) -> bool:
    """Return whether the compiled parse can read ``source`` for ``schema``.

    It reads CSV whose schema columns are all numbers, integers, numeric codes
    or numeric booleans, in UTF-8 or a single-byte encoding that writes ASCII
    as ASCII. Anything else, and any file with a quote, too many fields or a
    lone CR, goes to pandas' parser.
    """
    if source.kind != "csv" or source.encoding is None or source.delimiter is None:
        return False
    if not source.delimiter.isascii() or len(source.delimiter) != 1:
        return False
    name = codecs.lookup(source.encoding).name
    if not (
        name in ("utf-8", "utf-8-sig", "ascii") or name.startswith(("iso8859", "cp125"))
    ):
        return False
    if _ASCII_PROBE.encode(name) != _ASCII_PROBE.encode("ascii"):
        return False
    present = [name for name in schema.column_names if name in source.file_columns]
    text = string_columns(schema)
    if any(
        isinstance(schema.column(column), IdentifierColumn | DateColumn)
        or column in text
        for column in present
    ):
        return False
    markers = text_missing_markers(schema)
    try:
        for column in present:
            for marker in markers[column]:
                marker.encode(name)
    except UnicodeEncodeError:
        return False
    return True


def iter_compiled_chunks(
    source: TableSource, schema: Schema, chunk_rows: int
) -> Iterator[Chunk]:
    """Yield the rows of a numeric CSV file, parsed by a compiled loop.

    Each block of whole lines is split and parsed in one pass
    (:func:`kernels.parse_numeric_block`). A cell that the loop leaves to Python
    (an exponent, more than 15 digits, a byte outside ASCII) is trimmed and
    read by ``float`` if it matches the number pattern of the text checks.

    Raises:
        CompiledParseUnsupported: the file has a quote, a row with more fields
            than the header, or a line that ends in a lone CR.

    """
    from schemas.checks import NUMBER_PATTERN

    encoding = source.encoding or "utf-8"
    present = [name for name in schema.column_names if name in source.file_columns]
    column_of_field = np.array(
        [
            present.index(name) if name in present else -1
            for name in source.file_columns
        ],
        dtype=np.int64,
    )
    markers = text_missing_markers(schema)
    encoded = [[m.encode(encoding) for m in markers[name]] for name in present]
    flat = [marker for column in encoded for marker in column]
    marker_bytes = np.frombuffer(b"".join(flat), dtype=np.uint8).copy()
    marker_bounds = np.cumsum([0, *(len(m) for m in flat)]).astype(np.int64)
    column_markers = np.cumsum([0, *(len(c) for c in encoded)]).astype(np.int64)
    empty_missing = np.array([b"" in column for column in encoded], dtype=np.bool_)
    number = re.compile(NUMBER_PATTERN, re.ASCII)
    delimiter = source.delimiter.encode(encoding) if source.delimiter else b","
    utf8 = codecs.lookup(encoding).name.startswith("utf-8")
    with source.text_path.open("rb") as handle:
        bom = handle.read(3) == codecs.BOM_UTF8 and utf8
        handle.seek(len(codecs.BOM_UTF8) if bom else 0)
        first_line = 1
        if source.header:
            _check_header_line(handle.readline(), encoding)
            first_line = 2
        for buffer, size in _whole_line_blocks(handle, PARSE_BLOCK_BYTES):
            if not buffer.isascii():
                # pandas decodes every byte, so a byte invalid in the encoding
                # makes the file unreadable even in a column outside the schema.
                try:
                    codecs.decode(memoryview(buffer)[:size], encoding)
                except UnicodeDecodeError as exc:
                    raise CompiledParseUnsupported(str(exc)) from exc
            outcome, line, left, ends, values, kinds = kernels.parse_numeric_block(
                np.frombuffer(buffer, dtype=np.uint8, count=size),
                size,
                delimiter[0],
                column_of_field,
                len(present),
                marker_bytes,
                marker_bounds,
                column_markers,
                empty_missing,
                _MAX_BLOCK_CELLS,
            )
            if outcome == kernels.TOO_MANY_CELLS:
                # Blank or very short lines: pandas' parser needs less memory.
                raise CompiledParseUnsupported("too many cells in one block")
            if outcome != kernels.PARSED:
                raise CompiledParseUnsupported(
                    f"line {first_line + line}: {_OUTCOMES[outcome]}"
                )
            if left > max(1_000, values.size // 20):
                # Python reads each of these cells; pandas' parser is faster.
                raise CompiledParseUnsupported(f"{left} cells left to Python")
            starts = np.empty(len(ends), dtype=np.int64)
            starts[0:1] = 0
            starts[1:] = ends[:-1] + 1
            raw = RawLines(buffer, starts, ends)
            if left:
                _read_left_cells(
                    raw,
                    kinds,
                    values,
                    column_of_field,
                    delimiter,
                    encoding,
                    markers,
                    present,
                    number,
                )
            for begin in range(0, len(ends), chunk_rows):
                stop = min(begin + chunk_rows, len(ends))
                yield Chunk(
                    frame=None,
                    lines=np.arange(
                        first_line + begin, first_line + stop, dtype=np.int64
                    ),
                    numbers={
                        name: (values[index, begin:stop], kinds[index, begin:stop])
                        for index, name in enumerate(present)
                    },
                    raw=RawLines(buffer, starts[begin:stop], ends[begin:stop]),
                )
            first_line += len(ends)


_MAX_BLOCK_CELLS = 4 * 1024 * 1024
_OUTCOMES = {
    kernels.QUOTE_FOUND: "a quote character",
    kernels.TOO_MANY_FIELDS: "more fields than the header",
    kernels.UNSUPPORTED: "a lone carriage return",
}


def _check_header_line(line: bytes, encoding: str) -> None:
    """Hand a header that pandas would split or reject over to pandas' parser."""
    body = line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n")
    if b"\r" in body:
        raise CompiledParseUnsupported("the header line contains a lone CR")
    try:
        line.decode(encoding)
    except UnicodeDecodeError as exc:
        raise CompiledParseUnsupported(str(exc)) from exc


def _read_left_cells(  # noqa: PLR0913 - the parse's context, passed through
    raw: RawLines,
    kinds: np.ndarray,
    values: np.ndarray,
    column_of_field: np.ndarray,
    delimiter: bytes,
    encoding: str,
    markers: dict[str, list[str]],
    present: list[str],
    number: re.Pattern[str],
) -> None:
    """Classify the cells that the compiled loop left to Python, in place."""
    columns, rows = np.nonzero(kinds == kernels.CELL_UNPARSED)
    field_of_column = {
        int(column): field
        for field, column in enumerate(column_of_field.tolist())
        if column >= 0
    }
    separator = delimiter.decode(encoding)
    split_rows: dict[int, list[str]] = {}
    for column, row in zip(columns.tolist(), rows.tolist(), strict=True):
        cells = split_rows.get(row)
        if cells is None:
            line = raw.rows(np.array([row]))[0].decode(encoding, errors="replace")
            cells = split_rows[row] = line.split(separator)
        field = field_of_column[column]
        cell = cells[field] if field < len(cells) else ""
        text = cell.strip()
        if cell in markers[present[column]] or text in markers[present[column]]:
            kinds[column, row] = kernels.CELL_MISSING
        elif number.fullmatch(text) and math.isfinite(float(text)):
            kinds[column, row] = kernels.CELL_NUMBER
            values[column, row] = float(text)
        else:
            kinds[column, row] = kernels.CELL_WRONG


def _whole_line_blocks(
    handle: io.BufferedReader, block_bytes: int
) -> Iterator[tuple[bytearray, int]]:
    """Yield the rest of ``handle`` as buffers of whole lines, and their size.

    A buffer ends after its last newline, or at the end of the file.
    """
    tail = b""
    while True:
        buffer = bytearray(len(tail) + block_bytes)
        buffer[: len(tail)] = tail
        read = handle.readinto(memoryview(buffer)[len(tail) :])
        size = len(tail) + read
        if read == 0:
            if tail:
                yield buffer, size
            return
        cut = buffer.rfind(b"\n", 0, size) + 1
        if cut == 0:
            tail = bytes(buffer[:size])
            continue
        tail = bytes(buffer[cut:size])
        yield buffer, cut


def _first_line_of(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def prefetch(items: Iterator[T], name: str = "prefetch") -> Iterator[T]:
    """Yield ``items`` while a background thread produces the next one.

    pandas' C parser releases the GIL while it tokenizes (``_tokenize_rows`` in
    pandas' parsers.pyx), and NumPy while it compares and searches large arrays,
    so with a free core, parsing chunk n+1 or indexing the next block of lines
    overlaps with checking chunk n. At most one produced item waits in memory.
    An exception in the producer is raised in the caller.
    """
    slots: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(("item", item)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises
            offer(("error", exc))
            return
        offer(("done", None))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            if kind == "done":
                return
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()


def open_parquet(path: Path, schema: Schema) -> TableSource:
    """Open a Parquet file and map its columns to the schema."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise UnreadableFileError(
            path, f"cannot be read as Parquet ({exc})", "export the file again"
        ) from exc
    file_columns = tuple(parquet.schema_arrow.names)
    extra = tuple(name for name in file_columns if name not in schema.column_names)
    return TableSource(
        path=path,
        kind="parquet",
        encoding=None,
        delimiter=None,
        header=True,
        file_columns=file_columns,
        extra_columns=extra,
        estimated_rows=parquet.metadata.num_rows,
    )


def iter_parquet_chunks(
    source: TableSource, schema: Schema, chunk_rows: int
) -> Iterator[Chunk]:
    """Yield a Parquet file's rows in batches; a row's number counts from 1.

    Text cells that match a missing marker become missing, and timestamps are
    formatted with the column's declared format, so later checks treat Parquet
    and CSV alike.
    """
    import pyarrow.parquet as pq

    present = [name for name in schema.column_names if name in source.file_columns]
    markers = text_missing_markers(schema)
    offset = 1
    parquet = pq.ParquetFile(source.path)
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        original = batch.to_pandas()
        frame = original[present]
        for name in present:
            column = frame[name]
            normalized = normalize_typed_column(column, schema, name, markers[name])
            # Assign only replaced columns: each assignment can copy a block.
            if normalized is not column:
                frame[name] = normalized
        lines = np.arange(offset, offset + len(frame), dtype=np.int64)
        frame.index = pd.RangeIndex(offset - 1, offset - 1 + len(frame))
        offset += len(frame)
        yield Chunk(frame=frame, lines=lines, original=original)


def iter_frame_chunks(
    source: TableSource, schema: Schema, chunk_rows: int
) -> Iterator[Chunk]:
    """Yield an in-memory DataFrame in chunks; a row's number is its position + 1."""
    assert source.frame is not None
    present = [name for name in schema.column_names if name in source.file_columns]
    markers = text_missing_markers(schema)
    for start in range(0, len(source.frame), chunk_rows):
        original = source.frame.iloc[start : start + chunk_rows]
        frame = original[present]
        for name in present:
            column = frame[name]
            normalized = normalize_typed_column(column, schema, name, markers[name])
            # Assign only replaced columns: each assignment can copy a block.
            if normalized is not column:
                frame[name] = normalized
        frame.index = pd.RangeIndex(start, start + len(frame))
        lines = np.arange(start + 1, start + 1 + len(frame), dtype=np.int64)
        yield Chunk(frame=frame, lines=lines, original=original)


def normalize_typed_column(
    values: pd.Series, schema: Schema, name: str, markers: list[str]
) -> pd.Series:
    """Prepare a typed (Parquet or DataFrame) column for the text-based checks.

    Text cells that match a missing marker become missing, timestamps of a date
    column are formatted with its declared format, and numbers in a column that
    is read as text (text codes, identifiers) become text without a trailing '.0'.
    """
    column = schema.column(name)
    if pd.api.types.is_datetime64_any_dtype(values) and isinstance(column, DateColumn):
        return values.dt.strftime(column.format)
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        if name in string_columns(schema):
            text = values.astype("string").str.replace(r"\.0$", "", regex=True)
            return text.astype(object).where(values.notna(), None)
        return values
    text = values.astype("string")
    return text.where(~text.isin(markers), None)


class LineReader:
    """Read raw lines of a text file by line number, moving forward only.

    Line numbers must be requested in increasing order across calls. A
    background thread reads the file block by block and finds each block's line
    ends, so the caller's thread only slices out the requested lines. Memory use
    is about three blocks of the file plus their line-end offsets, whatever the
    file size.
    """

    def __init__(self, path: Path) -> None:
        self._blocks = prefetch(_indexed_blocks(path), name="line-index")
        self._block: bytes | bytearray = b""
        self._ends = np.zeros(0, dtype=np.int64)
        self._first_line = 1
        self._exhausted = False

    def close(self) -> None:
        """Stop the background reader and close the file."""
        self._blocks.close()  # type: ignore[attr-defined]

    def __enter__(self) -> LineReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load_next_block(self) -> bool:
        """Replace the block by the lines after it; return False at end of file."""
        if self._exhausted:
            return False
        block = next(self._blocks, None)
        self._first_line += len(self._ends)
        if block is None:
            self._exhausted = True
            self._block, self._ends = b"", np.zeros(0, dtype=np.int64)
            return False
        self._block, self._ends = block
        return True

    def read(self, line_numbers: np.ndarray) -> list[bytes]:
        """Return the raw bytes of each requested line, without its line ending."""
        requested = np.asarray(line_numbers, dtype=np.int64)
        found: list[bytes] = []
        position = 0
        while position < len(requested):
            last_line = self._first_line + len(self._ends) - 1
            if requested[position] > last_line:
                if not self._load_next_block():
                    break
                continue
            stop = int(np.searchsorted(requested, last_line, side="right"))
            index = requested[position:stop] - self._first_line
            ends = self._ends[index]
            starts = np.where(index > 0, self._ends[np.maximum(index - 1, 0)] + 1, 0)
            block = self._block
            # Slicing bytes is the only per-row step, and only for quarantined rows.
            found.extend(
                bytes(block[start:end]).rstrip(b"\r")
                for start, end in zip(starts.tolist(), ends.tolist(), strict=True)
            )
            position = stop
        return found

    def count_lines(self) -> int:
        """Return the number of lines in the file, reading to its end."""
        while self._load_next_block():
            pass
        return self._first_line - 1


def _indexed_blocks(path: Path) -> Iterator[tuple[bytearray, np.ndarray]]:
    """Yield the file as blocks of whole lines, each with its line-end offsets.

    A line ends at a newline byte, or at the end of the file for a last line
    without one.
    """
    with path.open("rb") as handle:
        for buffer, size in _whole_line_blocks(handle, _BLOCK_BYTES):
            ends = kernels.line_ends(np.frombuffer(buffer, dtype=np.uint8, count=size))
            if len(ends) == 0 or ends[-1] != size - 1:
                ends = np.append(ends, size)
            yield buffer, ends
