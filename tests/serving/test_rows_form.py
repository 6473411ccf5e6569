"""The `columns` + `rows` form of :predict_batch: the hand parser accepts exactly what the pydantic model
accepts unchanged (and says when every value is a float), and the vector builder reads the same vectors
off `Row`s as off the instances form, by position, whatever the column order."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from loopstack.serving.schemas import PredictBatchRequest, fast_predict_rows
from loopstack.serving.vector import InputError, Row, VectorBuilder
from loopstack.signature import Signature

COLS = ["a", "b", "c"]
GOOD = [
    {"columns": COLS, "rows": [[0.5, 1.5, 2.5], [3.0, 4.0, 5.0]]},
    {"columns": COLS, "rows": [[1, "x", None], [True, 2.0, 3]], "user_id": "u", "deadline_ms": 20},
    {"columns": ["a"], "rows": [[1.0]], "user_id": 7},
]
BAD = [
    {"columns": COLS, "rows": [[0.5, 1.5]]},                          # a short row
    {"columns": COLS, "rows": [[0.5, 1.5, 2.5, 3.5]]},                # a long row
    {"columns": ["a", "a"], "rows": [[1.0, 2.0]]},                    # a column twice
    {"columns": COLS, "rows": [[0.5, [1], 2.5]]},                     # a list as a value
    {"columns": COLS, "rows": [[0.5, {"x": 1}, 2.5]]},                # an object as a value
    {"columns": COLS, "rows": []},                                    # no rows
    {"columns": [], "rows": [[]]},                                    # no columns
    {"columns": [1, 2], "rows": [[1.0, 2.0]]},                        # names that are not strings
    {"columns": COLS},                                                # columns without rows
    {"rows": [[1.0]]},                                                # rows without columns
    {"columns": ["a"], "rows": [[1.0]], "instances": [{}]},           # both forms
    {"columns": ["a"], "rows": [1.0]},                                # a row that is not a list
    {"columns": ["a"], "rows": [[1.0]], "colour": "red"},             # an unknown key
    {"columns": ["a"], "rows": [[1.0]], "deadline_ms": 0},
    {"columns": ["a"], "rows": [[1.0]], "user_id": 1.5},
]


@pytest.mark.parametrize("body", GOOD)
def test_fast_rows_parser_accepts_what_pydantic_accepts_with_the_same_values(body):
    cols, rows, uid, deadline, floats = fast_predict_rows(body)
    ref = PredictBatchRequest.model_validate(body)
    assert (list(cols), rows, uid, deadline) == (ref.columns, ref.rows, ref.user_id, ref.deadline_ms)
    assert floats is all(type(v) is float for r in rows for v in r)


@pytest.mark.parametrize("body", BAD)
def test_anything_unusual_in_the_rows_form_is_left_to_pydantic_which_refuses_it(body):
    assert fast_predict_rows(body) is None
    with pytest.raises(ValidationError):
        PredictBatchRequest.model_validate(body)


def test_pydantic_says_which_row_is_the_wrong_length():
    with pytest.raises(ValidationError, match="row 1 has 2 values for 3 columns"):
        PredictBatchRequest.model_validate({"columns": COLS, "rows": [[1.0, 2.0, 3.0], [1.0, 2.0]]})


def _builder(cols: dict) -> VectorBuilder:
    sig = Signature.coerce({"inputs": [{"ref": c, "version": None, "dtype": t} for c, t in cols.items()],
                            "outputs": [{"name": "score", "dtype": "float64", "positive_class": 1}]})
    return VectorBuilder(sig, {}, {})


def _rows(columns: list[str], values: list[list]) -> list[tuple[Row, Row]]:
    cols = tuple(columns)
    index = {c: i for i, c in enumerate(cols)}
    return [(r, r) for r in (Row(cols, index, v) for v in values)]


@pytest.mark.parametrize("columns", [["a", "b", "c"], ["c", "a", "b"], ["x", "b", "a", "c"]])
def test_rows_give_the_vectors_the_instances_give_whatever_the_column_order(columns):
    b = _builder({"a": "float64", "b": "float64", "c": "float64"})
    values = [[float(i * 10 + j) for j in range(len(columns))] for i in range(5)]
    want = b.build(None, [({}, dict(zip(columns, v))) for v in values])
    for _ in range(2):     # the second time from the per-columns cache
        got = b.build(None, _rows(columns, values))
        assert [list(v) for v in got] == [list(v) for v in want]
    if columns == ["a", "b", "c"]:
        assert got[0] is values[0]     # already in model order: the rows are the vectors, no copy


def test_rows_that_need_conversion_or_lack_a_column_take_the_checked_path():
    b = _builder({"a": "float64", "b": "int64"})
    assert [list(v) for v in b.build(None, _rows(["b", "a"], [[2, 1], [3.0, 0.5]]))] == [[1.0, 2], [0.5, 3]]
    with pytest.raises(InputError, match="missing request field 'b'.*add a column 'b'"):
        b.build(None, _rows(["a"], [[1.0]]))
    with pytest.raises(InputError, match="field 'a'.*number"):
        b.build(None, _rows(["a", "b"], [[1.0, 2], ["x", 3]]))


def test_a_row_is_a_read_only_mapping_of_its_columns():
    (row, _), = _rows(["a", "b"], [[1.0, "x"]])
    assert dict(row) == {"a": 1.0, "b": "x"} and "a" in row and "z" not in row and row.get("z") is None
    assert len(row) == 2 and list(row) == ["a", "b"]
