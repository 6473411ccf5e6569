"""Bad input on the definitions / config / offline-retrieval surface: each gives a clear error, not a crash."""
from __future__ import annotations

from datetime import timedelta

from pathlib import Path

import pandas as pd
import pytest

from loopstack.config import parse_config
from loopstack.errors import ConfigError, DefinitionError
from loopstack.features.definitions import Count, Entity, EventSource, FeatureView, Field, Mean, Sum
from loopstack.project import Project
from loopstack.timeutil import parse_duration

from .test_cli import run

AUTHOR = Entity("author", join_key="author_id")
SRC = EventSource("comments", "ts", [Field("author_id", "int64"), Field("text", "string"), Field("at", "timestamp"),
                                     Field("n", "int32"), Field("flag", "bool")])


@pytest.mark.parametrize("kwargs, words", [
    ({"entity": AUTHOR, "source": "comments"}, "source= must be an EventSource"),
    ({"entity": "author", "source": SRC}, "entity= must be an Entity"),
])
def test_view_with_a_name_instead_of_an_object(kwargs, words):
    with pytest.raises(DefinitionError, match=words):
        FeatureView("v", features=[Count(window="1h")], **kwargs)


@pytest.mark.parametrize("agg", [Sum("text", window="1d"), Mean("at", window="1d")])
def test_sum_or_mean_over_a_non_numeric_column_is_refused(agg):
    with pytest.raises(DefinitionError, match="needs a number or bool column"):
        FeatureView("v", entity=AUTHOR, source=SRC, features=[agg])


def test_sum_and_mean_over_numbers_and_bools_are_fine():
    FeatureView("v", entity=AUTHOR, source=SRC, features=[Sum("n", window="1d"), Mean("flag", window="1d")])


@pytest.mark.parametrize("text", ["99999999999d", 1e30, float("nan")])
def test_out_of_range_durations_are_definition_errors(text):
    with pytest.raises(DefinitionError, match="out of range"):
        parse_duration(text)
    with pytest.raises(DefinitionError):
        Count(window=text)


def test_zero_needs_no_unit_but_other_numbers_do():
    # `dataset build --label-delay 0` was "not understood" while "0s" worked
    assert parse_duration("0") == parse_duration(" 0.0 ") == parse_duration("0s") == timedelta(0)
    for text in ("1", "-0", "0x"):
        with pytest.raises(DefinitionError, match="not understood"):
            parse_duration(text)


def test_definitions_error_names_file_and_line(tmp_path):
    p = Project.init(tmp_path, example=False)
    defs = tmp_path / "definitions.py"
    defs.write_text("from loopstack import Count\n\nx = 1\nc = Count(window='0h')\n")
    with pytest.raises(DefinitionError, match=r"definitions.py:4: DefinitionError: window '0h'"):
        p.load_definitions()
    defs.write_text("x = = 1\n")
    with pytest.raises(DefinitionError, match=r"definitions.py:1: SyntaxError"):
        p.load_definitions()


def test_init_on_a_file_is_a_config_error(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ConfigError, match="it is a file"):
        Project.init(f)
    with pytest.raises(ConfigError, match="cannot create project folder"):
        Project.init(f / "sub")


@pytest.mark.parametrize("raw", [["a", "b"], "hello", 5])
def test_config_that_is_not_a_mapping(raw):
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        parse_config(raw, env={})


def _project(tmp_path: Path) -> Project:
    p = Project.init(tmp_path / "proj", example=False)
    (p.root / "events").mkdir()
    pd.DataFrame({"author_id": [1, 1], "n": [2, 3],
                  "ts": pd.to_datetime(["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"])}
                 ).to_parquet(p.root / "events" / "e.parquet")
    src = EventSource("ev", "ts", [Field("author_id", "int64"), Field("n", "int64")], path="events/")
    p.apply([FeatureView("a", entity=AUTHOR, source=src, features=[Sum("n", window="7d", name="n7")])])
    return p


def test_one_feature_reference_as_a_string(tmp_path):
    p = _project(tmp_path)
    df = pd.DataFrame({"author_id": [1], "event_timestamp": pd.to_datetime(["2024-01-03T00:00:00Z"])})
    out = p.get_historical_features(df, "a:n7")
    assert out["n7"].tolist() == [5]


def test_historical_cli_bad_files_are_one_line_errors(tmp_path):
    p = _project(tmp_path)
    (tmp_path / "e.csv").write_text("author_id,event_timestamp\n1,2024-01-03T00:00:00Z\n")
    (tmp_path / "junk.parquet").write_text("junk")
    base = ("features", "historical", "-p", str(p.root), "-f", "a:n7")
    for args, words in (([str(tmp_path / "junk.parquet"), "-o", str(tmp_path / "o.csv")], "could not be read"),
                        ([str(tmp_path / "e.csv"), "-o", str(tmp_path / "nope" / "o.csv")], "does not exist"),
                        ([str(tmp_path / "e.csv"), "-o", str(tmp_path / "o.json")], ".parquet or .csv")):
        r = run(*base, *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.json").exists()
    r = run(*base, str(tmp_path / "e.csv"), "-o", str(tmp_path / "o.csv"))
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(tmp_path / "o.csv")["n7"].tolist() == [5]


def test_cli_errors_keep_bracketed_text(tmp_path):
    run("init", str(tmp_path))
    r = run("config", "-p", str(tmp_path), env={"LOOPSTACK_OFFLINE__BOGUS": "1"})
    assert r.returncode == 2 and "allowed keys of [offline] are" in r.stderr, r.stderr
