"""take_rows: the same rows as Table.take, from a many-batch table, without concatenating it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from indexes.arrow_rows import take_rows
from signals.errors import InvalidInput


def many_batches(path, n_batches: int = 7, rows: int = 13) -> pa.Table:
    """An Arrow file of several record batches, read back through a memory map."""
    schema = pa.schema([("i", pa.int64()), ("tokens", pa.list_(pa.string()))])
    with ipc.new_file(str(path), schema) as writer:
        for b in range(n_batches):
            ids = list(range(b * rows, (b + 1) * rows))
            tokens = [[f"t{i}"] * (i % 4) for i in ids]
            writer.write_table(pa.table({"i": ids, "tokens": tokens}, schema=schema))
    return ipc.open_file(pa.memory_map(str(path))).read_all()


def test_same_rows_as_take_in_the_order_asked_with_repeats(tmp_path) -> None:
    table = many_batches(tmp_path / "t.arrow")
    assert table.column("i").num_chunks == 7
    rows = np.random.default_rng(3).integers(0, table.num_rows, 200)
    rows[:3] = [90, 0, 90]  # repeats, last row, first row
    got = take_rows(table, rows)
    assert got.equals(table.take(pa.array(rows)))
    assert got.column("i").to_pylist() == rows.tolist()


def test_empty_single_batch_and_out_of_range(tmp_path) -> None:
    table = many_batches(tmp_path / "t.arrow")
    assert take_rows(table, []).num_rows == 0
    single = pa.table({"i": [5, 6, 7]})
    assert take_rows(single, [2, 0]).column("i").to_pylist() == [7, 5]
    for bad in ([table.num_rows], [-1]):
        with pytest.raises(InvalidInput) as err:
            take_rows(table, bad)
        assert err.value.field == "rows"
