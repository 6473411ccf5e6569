"""Datasets: label delay at the boundary, point-in-time features, splits, manifest, hashing, load-back."""
from __future__ import annotations

import json
import warnings
from datetime import timedelta

import pandas as pd
import pytest

from loopstack.training.datasets import DatasetError, list_datasets
from loopstack.training.splits import LeakageWarning, RandomSplit, TemporalSplit
from tests.training.conftest import FEATURES, T0, labels_for

CUT = T0 + timedelta(days=30)


def test_label_delay_keeps_labels_final_exactly_delay_before_cutoff(project):
    delay = timedelta(hours=24)
    base = T0 + timedelta(days=3)
    labels = pd.DataFrame({
        "author_id": [1, 1, 1, 1, 2],
        "event_timestamp": [base] * 5,
        "label": [1, 0, 1, 0, None],
        # final exactly `delay` before the cut-off (kept), 1 µs later (dropped), long before (kept),
        # unknown (dropped), no label (dropped)
        "label_timestamp": [CUT - delay, CUT - delay + timedelta(microseconds=1), base, None, base],
    })
    with pytest.warns(UserWarning, match="no evaluation rows"):
        ds = project.build_dataset(labels, FEATURES, label_delay="24h", cutoff=CUT, name="delay",
                                   split=TemporalSplit(train_end=base + timedelta(seconds=1)))
    assert ds.manifest["rows"] == {"input": 5, "kept": 2, "train": 2, "eval": 0}
    assert ds.dropped["by_reason"] == {"missing_prediction_time": 0, "missing_label": 1, "missing_label_time": 1,
                                       "not_final": 1, "outside_split": 0}
    assert ds.dropped["total"] == 3
    assert sorted(ds.train.label_timestamp) == sorted([base, CUT - delay])
    assert any("less than label_delay" in line and "dropped 1" in line for line in ds.report())


def test_features_are_point_in_time_against_brute_force(project, comment_events):
    labels = labels_for(comment_events)
    ds = project.build_dataset(labels, FEATURES, label_delay="24h", cutoff=CUT, name="pit",
                               split=TemporalSplit.weekly(T0 + timedelta(days=14)))
    frame = pd.concat([ds.train, ds.eval])
    assert len(frame) == len(comment_events) and frame.spam_7d.sum() > 0
    ev = pd.DataFrame(comment_events)
    week = pd.Timedelta(days=7)
    for _, row in frame.iterrows():
        t = row.event_timestamp
        mine = ev[(ev.author_id == row.author_id) & (ev.ts < t) & (ev.ts >= t - week)]
        assert row.spam_7d == mine.is_spam.sum(), row
        assert row.comments_7d == len(mine), row
    # a leaky join (all of the author's spam, including later) would differ on many rows
    leaky = frame.author_id.map(ev.groupby("author_id").is_spam.sum())
    assert (leaky != frame.spam_7d).sum() > 10


def test_temporal_split_boundaries(project):
    T = T0 + timedelta(days=7)
    one = timedelta(microseconds=1)
    times = [T - one, T, T + timedelta(days=7) - one, T + timedelta(days=7), T0 - one]
    labels = pd.DataFrame({"author_id": [1] * 5, "event_timestamp": times, "label": [0, 1, 0, 1, 0],
                           "label_timestamp": [T0 + timedelta(days=15)] * 5})
    ds = project.build_dataset(labels, FEATURES, cutoff=CUT, split=TemporalSplit.weekly(T, train_weeks=1))
    assert list(ds.train.event_timestamp) == [T - one]
    assert list(ds.eval.event_timestamp) == [T, T + timedelta(days=7) - one]
    assert ds.dropped["by_reason"]["outside_split"] == 2  # exactly T+7d, and before the training window
    assert ds.manifest["split"] == {"kind": "temporal", "train_start": (T - timedelta(days=7)).isoformat(),
                                    "train_end": T.isoformat(), "eval_start": T.isoformat(),
                                    "eval_end": (T + timedelta(days=7)).isoformat()}
    with pytest.raises(Exception, match="overlap"):
        TemporalSplit(train_end=T, eval_start=T - one)


def test_random_split_only_on_request_and_warns(project, comment_events):
    labels = labels_for(comment_events)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakageWarning)  # the default (temporal) split must not warn
        ds = project.build_dataset(labels, FEATURES, cutoff=CUT, name="default")
    assert ds.manifest["split"]["kind"] == "temporal"
    assert ds.train.event_timestamp.max() < ds.eval.event_timestamp.min()
    with pytest.warns(LeakageWarning, match="TemporalSplit"):
        rnd = project.build_dataset(labels, FEATURES, cutoff=CUT, name="rnd", split=RandomSplit(seed=1, fraction=0.25))
    assert rnd.manifest["split"] == {"kind": "random", "seed": 1, "fraction": 0.25}
    assert 0.18 < rnd.manifest["rows"]["eval"] / len(labels) < 0.32
    assert rnd.train.event_timestamp.max() > rnd.eval.event_timestamp.min()  # mixed in time


def test_manifest_contents(project, comment_events):
    labels = labels_for(comment_events)
    ds = project.build_dataset(labels, FEATURES, label_delay="2d", cutoff=CUT, name="spam",
                               split=TemporalSplit.weekly(T0 + timedelta(days=14)))
    folder = ds.manifest["files"]["train"]["path"].rsplit("/", 1)[0]
    m = json.loads(project.artifacts.get_bytes(f"{folder}/manifest.json"))
    assert m == json.loads(json.dumps(ds.manifest, default=str))
    assert [f["ref"] for f in m["features"]] == FEATURES
    assert {f["view_version"] for f in m["features"]} == {project.registry.view_version("author_stats")["version"]}
    assert m["label_source"]["kind"] == "dataframe" and m["label_source"]["rows"] == len(labels)
    assert m["cutoff"] == CUT.isoformat() and m["label_delay"] == "2d" and m["label_delay_seconds"] == 172800
    assert m["rows"]["train"] + m["rows"]["eval"] + m["dropped"]["total"] == len(labels)
    assert m["rows"]["train"] == sum(e["ts"] < T0 + timedelta(days=14) for e in comment_events)
    spam_train = int(ds.train.label.sum())
    assert m["class_balance"]["train"]["counts"] == {"0": m["rows"]["train"] - spam_train, "1": spam_train}
    assert m["time_range"]["eval"][1] < (T0 + timedelta(days=21)).isoformat()
    assert m["content_hash"].startswith("sha256:") and m["version"] == 1
    assert m["columns"] == {"entities": ["author_id"], "time": "event_timestamp", "label": "label",
                            "label_time": "label_timestamp"}


def test_same_inputs_same_hash_changed_data_new_hash_and_load_back(project, comment_events):
    labels = labels_for(comment_events)
    split = TemporalSplit.weekly(T0 + timedelta(days=14))
    a = project.build_dataset(labels, FEATURES, cutoff=CUT, name="spam", split=split)
    shuffled = labels.sample(frac=1.0, random_state=4)  # input order must not matter
    b = project.build_dataset(shuffled, FEATURES, cutoff=CUT, name="spam", split=split)
    assert a.content_hash == b.content_hash and (a.version, b.version) == (1, 2) and a.id != b.id
    changed = labels.copy()
    changed.loc[5, "label"] = 1 - changed.loc[5, "label"]
    c = project.build_dataset(changed, FEATURES, cutoff=CUT, name="spam", split=split)
    assert c.content_hash != a.content_hash
    # a new event in the log changes the features, hence the hash
    project.log.append("comments", [{"author_id": int(labels.author_id[0]), "is_spam": 1, "n_urls": 0,
                                     "ts": T0 + timedelta(days=10)}])
    d = project.build_dataset(labels, FEATURES, cutoff=CUT, name="spam", split=split)
    assert d.content_hash not in (a.content_hash, c.content_hash)

    back = project.dataset("spam@1")
    assert back.id == a.id and back.content_hash == a.content_hash
    pd.testing.assert_frame_equal(back.train, a.train.reset_index(drop=True))
    assert project.dataset(b.id).version == 2
    assert project.dataset("spam").version == 4  # newest
    X, y = back.X_y("eval")
    assert list(X.columns) == ["spam_7d", "comments_7d"] and len(y) == back.manifest["rows"]["eval"]
    assert [d["version"] for d in list_datasets(project, "spam")] == [4, 3, 2, 1]
    with pytest.raises(DatasetError, match="no dataset 'nope'.*spam"):
        project.dataset("nope")


def test_labels_from_parquet_and_topic_and_clear_errors(project, comment_events, tmp_path):
    labels = labels_for(comment_events[:300])
    path = tmp_path / "labels.parquet"
    labels.to_parquet(path)
    split = TemporalSplit.weekly(T0 + timedelta(days=3))
    from_file = project.build_dataset(str(path), FEATURES, cutoff=CUT, split=split)
    from_df = project.build_dataset(labels, FEATURES, cutoff=CUT, split=split)
    assert from_file.name == "labels" and from_file.content_hash == from_df.content_hash
    from loopstack.log.base import TopicConfig
    project.log.create_topic(TopicConfig("spam_labels", 2))
    project.log.append("spam_labels", labels.to_dict("records"), key="author_id")
    from_topic = project.build_dataset("spam_labels", FEATURES, cutoff=CUT, split=split)
    assert from_topic.manifest["label_source"]["kind"] == "topic"
    assert from_topic.manifest["rows"]["kept"] == 300
    assert sorted(from_topic.train.spam_7d) == sorted(from_df.train.spam_7d)
    with pytest.raises(DatasetError, match="lack column.*label_timestamp"):
        project.build_dataset(labels.drop(columns=["label_timestamp"]), FEATURES, cutoff=CUT)
    with pytest.raises(DatasetError, match="neither an existing file"):
        project.build_dataset("no_such_topic", FEATURES, cutoff=CUT)
    with pytest.raises(DatasetError, match="no label is final"):
        project.build_dataset(labels, FEATURES, cutoff=T0)


def test_empty_or_unreadable_label_files_are_clear_errors(project, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="labels file .*empty.csv' is empty: it needs a header row"):
        project.build_dataset(str(tmp_path / "empty.csv"), FEATURES, cutoff=CUT)
    (tmp_path / "labels.jsonl").write_text('{"author_id": 1}\n')
    with pytest.raises(DatasetError, match="labels.jsonl' is not a readable Parquet file.*or a .csv file"):
        project.build_dataset(str(tmp_path / "labels.jsonl"), FEATURES, cutoff=CUT)
    (tmp_path / "bad.parquet").write_bytes(b"")
    with pytest.raises(DatasetError, match="bad.parquet' is not a readable Parquet file"):
        project.build_dataset(str(tmp_path / "bad.parquet"), FEATURES, cutoff=CUT)
