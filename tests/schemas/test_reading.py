"""Raw line reader, encoding and delimiter detection."""

import numpy as np
import pytest

import schemas.reading as reading
from schemas.reading import LineReader, detect_delimiter, detect_encoding

CASES = [
    b"a\nbb\r\nccc\nd",
    b"a\nbb\nccc\n",
    b"x",
    b"a\n\nb\n",
    b"\n\n",
]


@pytest.mark.parametrize("text", CASES)
@pytest.mark.parametrize("block_bytes", [1, 2, 3, 1024])
def test_line_reader_known_lines(tmp_path, monkeypatch, text, block_bytes):
    # Tiny blocks force lines to straddle block boundaries.
    monkeypatch.setattr(reading, "_BLOCK_BYTES", block_bytes)
    path = tmp_path / "lines.txt"
    path.write_bytes(text)
    parts = text.split(b"\n")
    count = len(parts) - 1 if text.endswith(b"\n") else len(parts)
    expected = [part.rstrip(b"\r") for part in parts[:count]]
    with LineReader(path) as reader:
        assert reader.read(np.arange(1, count + 1)) == expected
        assert reader.count_lines() == count
    with LineReader(path) as reader:
        assert reader.read(np.array([count])) == expected[-1:]
        assert reader.count_lines() == count


def test_line_reader_across_calls(tmp_path, monkeypatch):
    monkeypatch.setattr(reading, "_BLOCK_BYTES", 4)
    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join(f"row{i}\n".encode() for i in range(1, 21)))
    with LineReader(path) as reader:
        assert reader.read(np.array([2, 3])) == [b"row2", b"row3"]
        assert reader.read(np.array([3, 17])) == [b"row3", b"row17"]
        assert reader.read(np.array([20])) == [b"row20"]


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("age,sex\n63,1\n".encode("utf-8-sig"), "utf-8-sig"),
        ("age,sex\n63,1\n".encode("utf-16"), "utf-16"),
        ("name\nZoë\n".encode(), "utf-8"),
    ],
)
def test_detect_encoding(tmp_path, data, encoding):
    assert detect_encoding(tmp_path / "x.csv", data) == encoding


def test_detect_encoding_latin1(tmp_path):
    data = "nom;ville\nRené;Genève\nZoë;Zürich\n".encode("latin-1") * 20
    detected = detect_encoding(tmp_path / "x.csv", data)
    assert data.decode(detected) == data.decode("latin-1")


@pytest.mark.parametrize(
    ("text", "delimiter"),
    [
        ("a,b,c\n1,2,3\n", ","),
        ("a;b;c\n1;2,5;3\n", ";"),
        ("a\tb\tc\n1\t2\t3\n", "\t"),
        ("a|b|c\n1|2|3\n", "|"),
    ],
)
def test_detect_delimiter(text, delimiter):
    assert detect_delimiter(text) == delimiter
