"""Bad input to the registry API: refused with a RegistryError that says what was wrong, nothing stored."""
from __future__ import annotations

import os
import sys

import pytest

from loopstack.registry import ArtifactIntegrityError, GateDecision, ModelReferenceError, RegistryError, TransitionError
from tests.registry.conftest import PASSING, legacy_empty_model, register
from tests.registry.helpers import SIGNATURE, ThresholdModel


@pytest.mark.parametrize("version", [1.7, True, "2", None])
def test_set_alias_needs_a_whole_version_number(reg, version):
    """1.7 was stored as-is (the alias then resolved to no row: NoResultFound); True meant version 1."""
    register(reg, "spam", 2)
    with pytest.raises(ModelReferenceError, match="not a version number"):
        reg.set_alias("spam", "champion", version)
    assert reg.list()[0]["aliases"] == {}
    reg.set_alias("spam", "champion", 2)
    assert reg.get("models:/spam@champion").version == 2


@pytest.mark.parametrize("decision,match", [
    ({"passed": "no", "reasons": []}, "'passed' must be True or False"),       # bool("no") was True: a pass
    ({"passed": 1, "reasons": []}, "'passed' must be True or False"),
    ({"passed": True, "reasons": "ok"}, "'reasons' must be a list"),
    ({"passed": True, "reasons": [["absolute:auc"]]}, r"must be \[check, passed, detail\]"),   # was IndexError
    ({"passed": True, "reasons": [5]}, r"must be \[check, passed, detail\]"),                  # was AttributeError
    ({"passed": True, "reasons": [["absolute:auc", False, "auc = 0.5"]]}, "absolute:auc failed"),
    ([1, 2], "needs 'passed' and 'reasons'"),                                                    # was TypeError
    (None, "needs 'passed' and 'reasons'"),
])
def test_record_gate_refuses_malformed_decisions(reg, decision, match):
    register(reg, "spam", 1, gate=False)
    with pytest.raises(RegistryError, match=match):
        reg.record_gate("models:/spam/1", decision)
    assert reg.get("models:/spam/1").gate_passed is None
    with pytest.raises(TransitionError, match="gate never ran"):
        reg.promote("models:/spam/1", "shadow", reason="gate passed?")


def test_record_gate_stores_dict_reasons_as_triples(reg):
    """Reasons given as dicts are stored as [check, passed, detail], the form `models show` reads back."""
    register(reg, "spam", 1, gate=False)
    reg.record_gate("models:/spam/1", {"passed": False, "reasons": [
        {"check": "absolute:auc", "passed": False, "detail": "auc = 0.5, needs >= 0.9"}]})
    mv = reg.get("models:/spam/1")
    assert mv.gate_passed is False and mv.gate["reasons"] == [["absolute:auc", False, "auc = 0.5, needs >= 0.9"]]
    assert GateDecision.from_dict(mv.gate).failed[0].check == "absolute:auc"
    assert reg.audit("spam", 1)[-1]["reason"] == "gate failed: absolute:auc"


NAN = float("nan")


@pytest.mark.parametrize("kwargs,match", [
    ({"params": {"alpha": NAN}}, "params cannot be stored as JSON"),          # was ValueError from json.dumps
    ({"params": [("lr", 0.1)]}, "params must be a dict"),                     # was TypeError
    ({"metrics": [0.9]}, "metrics must be a dict"),                           # was AttributeError
    ({"feature_versions": ["author_stats:spam_7d"]}, "feature_versions must be a dict"),
    ({"profile": {"features": 5}}, "profile is malformed"),                   # stored; `models show` crashed
    ({"profile": {"features": {"url_count": {"mean": 1.0}}}}, r"profile is malformed \(feature 'url_count'"),
    # longer than their column: PostgreSQL raised DataError (a traceback) and left a model with no versions;
    # SQLite kept the value
    ({"run_id": "r" * 256}, "run_id is 256 characters long"),
    ({"code_version": "c" * 300}, "code_version is 300 characters long"),
    ({"dataset": {"id": "d" * 256}}, "dataset id is 256 characters long"),
    ({"dataset": {"id": 7, "hash": "h" * 129}}, "dataset hash is 129 characters long"),
    ({"actor": "a" * 256}, "actor is 256 characters long"),
    ({"actor": "  "}, "actor is empty"),
])
def test_register_refuses_malformed_lineage_and_overlong_ids(reg, kwargs, match):
    with pytest.raises(RegistryError, match=match):
        reg.register("spam", ThresholdModel(), signature=SIGNATURE, **kwargs)
    assert reg.list() == []


def test_evidence_must_be_a_json_object(reg):
    """NaN evidence raised ValueError mid-transaction; a list raised TypeError. Now refused, nothing written."""
    register(reg, "spam", 1)
    before = len(reg.audit("spam"))
    with pytest.raises(RegistryError, match="evidence cannot be stored as JSON"):
        reg.promote("models:/spam/1", "shadow", reason="shadow ok", evidence={"p99_ms": NAN})
    with pytest.raises(RegistryError, match="evidence must be a dict"):
        reg.promote("models:/spam/1", "shadow", reason="shadow ok", evidence=[1, 2])
    with pytest.raises(RegistryError, match="evidence cannot be stored as JSON"):
        reg.record_event("models:/spam/1", "note", "drift", {"psi": float("inf")})
    assert reg.get("models:/spam/1").state == "candidate" and len(reg.audit("spam")) == before


def test_register_refuses_a_none_model(reg):
    """A training function that forgot to return its model registered None as a loadable 'model'."""
    with pytest.raises(RegistryError, match="the model is None"):
        reg.register("spam", None, signature=SIGNATURE)
    assert reg.list() == []


def test_load_with_a_missing_artifact_names_the_version(reg):
    mv = reg.register("spam", ThresholdModel(), signature=SIGNATURE)
    os.remove(reg.artifacts._full(mv.artifact_path))
    with pytest.raises(ArtifactIntegrityError, match=r"artifact of models:/spam/1 is missing .*register the model"):
        reg.load("models:/spam/1")


def test_load_of_a_model_whose_class_is_not_importable_is_a_registry_error(reg, tmp_path, monkeypatch):
    """Unpickling needs the model's module; without it the user got a ModuleNotFoundError traceback."""
    (tmp_path / "gone_module.py").write_text("class Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_module
    mv = reg.register("spam", gone_module.Model(), signature=SIGNATURE)
    monkeypatch.delitem(sys.modules, "gone_module")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(RegistryError, match=r"cannot load models:/spam/1: No module named 'gone_module'.*PYTHONPATH"):
        reg.load(mv.ref)


def test_long_actor_is_refused_by_every_change(reg):
    register(reg, "spam", 1)
    before = len(reg.audit("spam"))
    for change in (lambda a: reg.promote("models:/spam/1", "shadow", "ok", actor=a),
                   lambda a: reg.set_alias("spam", "champion", 1, actor=a),
                   lambda a: reg.record_gate("models:/spam/1", PASSING, actor=a),
                   lambda a: reg.record_event("models:/spam/1", "note", "x", actor=a)):
        with pytest.raises(RegistryError, match="actor is 300 characters long"):
            change("a" * 300)
    assert len(reg.audit("spam")) == before and reg.get("models:/spam/1").state == "candidate"


def test_a_model_left_without_versions_is_named_not_a_traceback(reg):
    """A first registration that failed after the model's row was created left it with no versions:
    `models:/spam/latest` was `ValueError: max() arg is an empty sequence`. Registration no longer leaves
    such a row, but databases written by older versions still hold them."""
    legacy_empty_model(reg, "spam")
    with pytest.raises(ModelReferenceError, match="model 'spam' has no versions yet"):
        reg.get("models:/spam/latest")
    with pytest.raises(ModelReferenceError, match="model 'spam' has no versions yet"):
        reg.get("models:/spam/1")


def test_folder_with_symbolic_links_stores_what_they_point_at(reg, tmp_path):
    """A Hugging Face style snapshot links to its weights: the links were stored, so the weights were lost
    and load() failed with tarfile.LinkOutsideDestinationError."""
    (tmp_path / "blobs" / "shared").mkdir(parents=True)
    (tmp_path / "blobs" / "w1").write_bytes(b"weights")
    (tmp_path / "blobs" / "shared" / "vocab.txt").write_text("a b c")
    snap = tmp_path / "snap"
    (snap / "sub").mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.bin").symlink_to("../blobs/w1")
    (snap / "sub" / "w.bin").symlink_to(tmp_path / "blobs" / "w1")
    (snap / "tok").symlink_to("../blobs/shared", target_is_directory=True)
    (snap / "sub" / "loop").symlink_to("..", target_is_directory=True)   # must not recurse forever
    mv = reg.register("llm", snap, signature=SIGNATURE)
    out = reg.load(mv.ref)
    assert (out / "model.bin").read_bytes() == b"weights" and not (out / "model.bin").is_symlink()
    assert (out / "sub" / "w.bin").read_bytes() == b"weights"
    assert (out / "tok" / "vocab.txt").read_text() == "a b c" and (out / "config.json").read_text() == "{}"


def test_folder_with_a_broken_link_is_refused(reg, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RegistryError, match="broken symbolic link"):
        reg.register("llm", tmp_path / "m", signature=SIGNATURE)
    assert reg.list() == []
