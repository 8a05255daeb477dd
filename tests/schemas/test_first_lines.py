"""The table of first rows that the duplicate search keeps for a whole file."""

import numpy as np

from schemas.duplicates import _FirstLines


def reference_first_lines(keys: np.ndarray, lines: np.ndarray) -> np.ndarray:
    first: dict[int, int] = {}
    pairs = zip(keys.tolist(), lines.tolist(), strict=True)
    return np.array([first.setdefault(key, line) for key, line in pairs])


def test_table_matches_dict_while_growing():
    # A table sized for 1,024 rows doubles several times for 20,000 keys.
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2**64 - 1, 20_000, dtype=np.uint64)
    repeats = rng.choice(20_000, 2_000, replace=False)
    keys[repeats] = keys[rng.choice(20_000, 2_000)]
    lines = np.arange(1, 20_001, dtype=np.int64)
    table = _FirstLines(expected_rows=None)
    found = np.concatenate(
        [
            table.first_lines(keys[start : start + 3_000], lines[start : start + 3_000])
            for start in range(0, 20_000, 3_000)
        ]
    )
    expected = reference_first_lines(keys, lines)
    np.testing.assert_array_equal(found, expected)
    assert np.count_nonzero(found != lines) > 1_000


def test_repeated_key_keeps_first_line():
    table = _FirstLines(expected_rows=10)
    keys = np.array([5, 9, 5, 5, 0], dtype=np.uint64)
    lines = np.array([3, 4, 8, 9, 10], dtype=np.int64)
    found = table.first_lines(keys, lines)
    assert found.tolist() == [3, 4, 3, 3, 10]
    later = table.first_lines(np.array([0, 9], dtype=np.uint64), np.array([11, 12]))
    assert later.tolist() == [10, 4]
