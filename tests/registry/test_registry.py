"""Registering, loading (sha256 verified), references, aliases, promotions and the audit log."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from loopstack.registry import (ArtifactIntegrityError, ModelReferenceError, RegistryError, TransitionError,
                                build_profile)
from tests.registry.conftest import PASSING, ladder_to, register
from tests.registry.helpers import SIGNATURE, ThresholdModel


def test_register_records_lineage_and_loads_the_object(reg):
    mv = reg.register("spam", ThresholdModel(0.7), signature=SIGNATURE, run_id="run-abc",
                      dataset={"id": 12, "hash": "f00d"}, metrics={"auc": np.float64(0.91), "precision": 0.96},
                      params={"num_leaves": 31}, code_version="c0ffee-dirty", actor="alice")
    assert (mv.name, mv.version, mv.state, mv.ref) == ("spam", 1, "candidate", "models:/spam/1")
    got = reg.get("models:/spam/1")
    assert got.run_id == "run-abc" and got.dataset_id == "12" and got.dataset_hash == "f00d"
    assert got.code_version == "c0ffee-dirty" and got.params == {"num_leaves": 31}
    assert got.metrics == {"auc": 0.91, "precision": 0.96}
    assert got.signature.feature_refs == ["author_stats:spam_7d", "comment:url_count", "comment:country"]
    assert got.feature_versions == {"author_stats:spam_7d": 3, "comment:url_count": 1, "comment:country": 2}
    assert got.signature.outputs[0]["name"] == "spam_score" and got.created_by == "alice"
    data = reg.artifacts.get_bytes(got.artifact_path)
    assert hashlib.sha256(data).hexdigest() == got.artifact_sha256 and got.artifact_uri.endswith(got.artifact_path)
    model = reg.load("models:/spam/1")
    assert isinstance(model, ThresholdModel) and model.weight == 0.7
    np.testing.assert_allclose(model.predict_proba([[1.0, 1.0]])[:, 1], 1 / (1 + np.exp(-1.4)))
    assert [e["action"] for e in reg.audit("spam")] == ["register"]


def test_versions_increment_and_list(reg):
    register(reg, "spam", 3, gate=False)
    register(reg, "fraud", 1, gate=False)
    assert [v.version for v in reg.versions("spam")] == [1, 2, 3]
    assert reg.get("models:/spam/latest").version == 3
    summary = {m["name"]: m for m in reg.list()}
    assert summary["spam"]["versions"] == 3 and summary["spam"]["latest"] == 3
    assert summary["fraud"]["states"] == {"candidate": 1} and summary["spam"]["production"] is None


def test_tampered_artifact_is_refused(reg):
    mv = reg.register("spam", ThresholdModel(), signature=SIGNATURE)
    full = reg.artifacts._full(mv.artifact_path)
    with open(full, "r+b") as f:   # flip one byte
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ArtifactIntegrityError, match=r"models:/spam/1 .*modified or corrupted after registration"):
        reg.load(mv.ref)


def test_file_and_folder_artifacts_load_as_verified_paths(reg, tmp_path):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"\x08\x07onnx-bytes")
    d = tmp_path / "hf_model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text('{"a": 1}')
    (d / "sub" / "w.bin").write_bytes(b"weights")
    v1 = reg.register("onnx", f, signature=SIGNATURE)
    v2 = reg.register("onnx", d, signature=SIGNATURE)
    p1, p2 = reg.load(v1.ref), reg.load(v2.ref)
    assert p1.read_bytes() == b"\x08\x07onnx-bytes" and p1.name == "model.onnx"
    assert (p2 / "config.json").read_text() == '{"a": 1}' and (p2 / "sub" / "w.bin").read_bytes() == b"weights"
    (tmp_path / "artifacts" / v1.artifact_path).write_bytes(b"evil")
    with pytest.raises(ArtifactIntegrityError):
        reg.load(v1.ref)
    with pytest.raises(RegistryError, match="does not exist"):
        reg.register("onnx", tmp_path / "missing.bin", signature=SIGNATURE)


def test_bad_inputs_are_named(reg):
    with pytest.raises(RegistryError, match="signature needs 'inputs'"):
        reg.register("spam", ThresholdModel(), signature={})
    with pytest.raises(RegistryError, match="more than once"):
        reg.register("spam", ThresholdModel(), signature={"inputs": [("a:x", 1, "int64"), ("a:x", 1, "int64")]})
    with pytest.raises(RegistryError, match="metric 'auc' = 'high' is not a number"):
        reg.register("spam", ThresholdModel(), signature=SIGNATURE, metrics={"auc": "high"})
    with pytest.raises(RegistryError, match="cannot serialize"):
        reg.register("spam", lambda x: x, signature=SIGNATURE)
    with pytest.raises(ModelReferenceError, match="invalid model name"):
        reg.register("bad name", ThresholdModel(), signature=SIGNATURE)
    assert reg.list() == []   # nothing half-registered


def test_unknown_references_say_what_exists(reg):
    register(reg, "spam", 2, gate=False)
    with pytest.raises(ModelReferenceError, match=r"no model named 'ham'.*models: spam"):
        reg.get("models:/ham/1")
    with pytest.raises(ModelReferenceError, match=r"no version 9 \(versions: 1, 2\)"):
        reg.get("models:/spam/9")
    with pytest.raises(ModelReferenceError, match=r"no alias 'champion' \(aliases: none\)"):
        reg.get("models:/spam@champion")


def test_aliases_set_move_delete_and_audit(reg):
    register(reg, "spam", 2, gate=False)
    reg.set_alias("spam", "champion", 1, reason="best offline", actor="bob")
    assert reg.get("models:/spam@champion").version == 1
    reg.set_alias("spam", "champion", 2, reason="retrained")
    assert reg.get("models:/spam@champion").version == 2
    assert reg.get("models:/spam/2").aliases == ("champion",) and reg.get("models:/spam/1").aliases == ()
    reg.delete_alias("spam", "champion", reason="gone")
    with pytest.raises(ModelReferenceError):
        reg.get("models:/spam@champion")
    moves = [(e["alias"], e["evidence"]["from_version"], e["evidence"]["to_version"]) for e in reg.audit("spam")
             if e["action"] == "alias"]
    assert moves == [("champion", None, 1), ("champion", 1, 2), ("champion", 2, None)]
    with pytest.raises(RegistryError, match="use promote"):
        reg.set_alias("spam", "production", 1)
    with pytest.raises(ModelReferenceError, match="no version 5"):
        reg.set_alias("spam", "champion", 5)
    assert reg.audit("spam", version=7) == []   # a known model, a version with no entry: an empty log
    with pytest.raises(ModelReferenceError, match="no model named 'nope'"):
        reg.audit("nope")


def test_promotion_ladder_production_replacement_and_audit(reg):
    register(reg, "spam", 2)
    ladder_to(reg, "models:/spam/1", "production")
    assert reg.get("models:/spam@production").version == 1
    reg.promote("models:/spam/2", "shadow", reason="shadow it", evidence={"sample": 0.1}, actor="carol")
    ladder_to(reg, "models:/spam/2", "production")
    assert reg.get("models:/spam/1").state == "archived"
    assert reg.get("models:/spam@production").version == 2 and reg.get("models:/spam/2").aliases == ("production",)
    trail = [(e["version"], e["action"], e["from_state"], e["to_state"]) for e in reg.audit("spam")
             if e["action"] in ("transition", "replaced")]
    assert trail[-2:] == [(2, "transition", "experiment", "production"), (1, "replaced", "production", "archived")]
    shadow = [e for e in reg.audit("spam", 2) if e["to_state"] == "shadow"][0]
    assert shadow["actor"] == "carol" and shadow["reason"] == "shadow it" and shadow["evidence"] == {"sample": 0.1}
    assert shadow["override"] is False and shadow["at"].tzinfo is not None
    default_actor = [e for e in reg.audit("spam", 2) if e["to_state"] == "canary"][0]["actor"]
    import getpass
    assert default_actor == getpass.getuser()


def test_gate_required_past_candidate_and_override_is_audited(reg):
    (v,) = register(reg, "spam", 1, gate=False)
    with pytest.raises(TransitionError, match="gate never ran"):
        reg.promote("models:/spam/1", "shadow", reason="try")
    reg.record_gate("models:/spam/1", {"passed": False, "reasons": [["absolute:recall", False, "recall 0.80"]]})
    with pytest.raises(TransitionError, match="gate failed"):
        reg.promote("models:/spam/1", "shadow", reason="try")
    assert reg.get("models:/spam/1").state == "candidate"
    mv = reg.promote("models:/spam/1", "shadow", reason="PM accepts recall 0.80 for the holiday", override=True,
                     actor="dana", evidence={"ticket": "ML-7"})
    assert mv.state == "shadow" and mv.gate_passed is False
    e = reg.audit("spam", 1)[-1]
    assert e["override"] is True and e["actor"] == "dana" and e["reason"].startswith("PM accepts")
    assert any("gate failed" in o for o in e["evidence"]["overridden"]) and e["evidence"]["ticket"] == "ML-7"
    gate_entries = [x for x in reg.audit("spam") if x["action"] == "gate"]
    assert gate_entries[0]["reason"] == "gate failed: absolute:recall"
    assert reg.get("models:/spam/1").gate["reasons"] == [["absolute:recall", False, "recall 0.80"]]


def test_skipping_rungs_needs_override(reg):
    register(reg, "spam", 1)
    with pytest.raises(TransitionError, match="skips shadow, canary, experiment"):
        reg.promote("models:/spam/1", "production", reason="yolo")
    reg.promote("models:/spam/1", "production", reason="hotfix for incident 9", override=True)
    assert reg.get("models:/spam@production").version == 1
    assert reg.audit("spam", 1)[-2]["override"] is True   # transition, then the alias move


def test_profile_stored_with_version(reg):
    df = pd.DataFrame({"x": [1.0, 2.0, None, 4.0], "c": ["a", "b", "a", None]})
    mv = reg.register("spam", ThresholdModel(), signature=SIGNATURE, profile=df, holdout_scores=[0.1, 0.2, 0.9, 0.4])
    prof = reg.profile(mv.ref)
    assert prof == build_profile(df, scores=[0.1, 0.2, 0.9, 0.4])
    assert prof["features"]["x"]["null_rate"] == 0.25 and prof["scores"]["count"] == 4
    bare = reg.register("spam", ThresholdModel(), signature=SIGNATURE)
    with pytest.raises(RegistryError, match="without a reference profile"):
        reg.profile(bare.ref)


def test_record_gate_needs_decision_shape(reg):
    register(reg, "spam", 1, gate=False)
    with pytest.raises(RegistryError, match="'passed' and 'reasons'"):
        reg.record_gate("models:/spam/1", {"ok": True})
    reg.record_gate("models:/spam/1", PASSING)
    assert reg.get("models:/spam/1").gate_passed is True
