"""Large whitespace-separated integer tables (RecordIO `.idx` files, IJB template pair lists),
parsed by NumPy's C parser a block of lines at a time."""

import warnings

import numpy as np

BLOCK_BYTES = 64 << 20


def _parse(data, columns):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(data, dtype=np.int64, sep=" ")
        except (DeprecationWarning, ValueError):
            return None
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    return values.reshape(-1, columns) if len(values) == lines * columns else None


def _raise_bad_line(path, data, first_line, columns, description):
    for number, line in enumerate(data.split(b"\n"), first_line):
        fields = line.split()
        ok = len(fields) == columns and all(f.lstrip(b"-").isdigit() for f in fields)
        if not ok:
            got = line.decode("utf-8", "replace")
            raise ValueError(f"{path}, line {number}: expected {description}; got {got!r}")
    raise ValueError(f"{path}: lines {first_line}.. cannot be read as {description}")


def read_int_columns(path, columns, description, block_bytes=BLOCK_BYTES):
    """The integers of a text file with `columns` per line, as int64 `[lines, columns]`.

    Trailing blank lines are ignored; any other line that is not `columns` integers (a blank
    line in between included) is a `ValueError` naming the file, the line number and the line.
    """
    blocks, first_line, tail = [], 1, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block_bytes)
            data = tail + chunk
            if chunk:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    tail = data
                    continue
                data, tail = data[:cut], data[cut:]
            else:
                data = data.rstrip()
            if data:
                values = _parse(data, columns)
                if values is None:
                    _raise_bad_line(path, data, first_line, columns, description)
                blocks.append(values)
                first_line += data.count(b"\n")
            if not chunk:
                break
    if not blocks:
        return np.zeros((0, columns), np.int64)
    return np.concatenate(blocks)
