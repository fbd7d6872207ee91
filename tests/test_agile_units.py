"""Units of the agile loop: embeddings in the store stay consistent with their segments (prune, restore,
--no-resume, move, schema upgrade), the backbone hash, the brute-force index, the head's scores, config checks."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from monitor.config import ConfigError, RunConfig
from monitor.store import FileKey, ResultsStore


def _put(st: ResultsStore, dep: str, f: str, n: int, card: int, seed: int = 0, width: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vec = rng.standard_normal((n, width)).astype(np.float16)
    segs = [(i, 10.0 * i, 10.0 * i + 10, np.full(2, 0.1 * i, np.float32)) for i in range(n)]
    st.put_file(FileKey(dep, f, 100, 1, "m"), "ok", "", {}, segs, card=card, embeddings=vec, backbone="bb",
                bundle="m")
    return vec


def test_embeddings_follow_their_segments_through_prune_restore_clear_and_move(tmp_path):
    st = ResultsStore(tmp_path / "monitor.sqlite")
    card = st.new_card("A", "/a")
    a = _put(st, "d1", "a.wav", 3, card, 1)
    _put(st, "d1", "b.wav", 2, card, 2)
    emb = st.load_embeddings("bb")
    assert len(emb) == 5 and emb.backbone == "bb"
    assert np.allclose(emb.norms, np.linalg.norm(emb.vectors.astype(np.float32), axis=1), rtol=1e-6)
    assert emb.file.tolist() == ["a.wav"] * 3 + ["b.wav"] * 2 and emb.segment.tolist() == [0, 1, 2, 0, 1]
    assert emb.start_s.tolist() == [0.0, 10.0, 20.0, 0.0, 10.0] and np.array_equal(emb.vectors[:3], a)
    # a re-scored file replaces its embeddings with its segments, in one transaction
    _put(st, "d1", "b.wav", 1, card, 3)
    assert st.count_embeddings() == 4 and st.file_embeddings("d1", "b.wav")[0].tolist() == [0]
    # a file re-scored without embeddings has none (never stale ones)
    st.put_file(FileKey("d1", "b.wav", 100, 1, "m"), "ok", "", {}, [(0, 0.0, 10.0, np.zeros(2, np.float32))],
                card=card)
    assert st.files_without_embeddings("bb") == [("d1", "b.wav")] and st.count_embeddings() == 3
    # --prune archives them with the file; --restore-pruned brings them back
    st.archive([("d1", "a.wav")], "gone")
    assert st.count_embeddings() == 0 and st.files_without_embeddings("bb") == [("d1", "b.wav")]
    assert st.restore_pruned() == [("d1", "a.wav")]
    assert np.array_equal(st.file_embeddings("d1", "a.wav")[1], a)
    # --move re-files them; --no-resume forgets them with the card's files
    st.move_files([("d1", "a.wav", "d2")])
    assert st.embedding_files("bb") == [("d2", "a.wav")] and st.has_embeddings("d2", "a.wav", "bb")
    st.clear_card(card)
    assert st.count_embeddings() == 0 and st.embedding_backbones() == {}
    st.close()


def test_a_run_keeping_embeddings_redoes_finished_files_without_them(tmp_path):
    st = ResultsStore(tmp_path / "monitor.sqlite")
    card = st.new_card("A", "/a")
    st.put_file(FileKey("d", "x.wav", 100, 1, "m"), "ok", "", {}, [(0, 0.0, 10.0, np.zeros(2, np.float32))],
                card=card)
    st.put_file(FileKey("d", "short.wav", 5, 1, "m"), "skipped", "too short", {}, card=card)
    key = FileKey("d", "x.wav", 100, 1, "m")
    assert st.is_done(key)
    st.embeddings_backbone = "bb"
    assert not st.is_done(key) and st.is_done(FileKey("d", "short.wav", 5, 1, "m"))
    _put(st, "d", "x.wav", 1, card)
    assert st.is_done(key)
    st.embeddings_backbone = "other"
    assert not st.is_done(key)
    st.close()


def test_a_schema_3_store_gains_the_embeddings_tables(tmp_path):
    path = tmp_path / "monitor.sqlite"
    st = ResultsStore(path)
    _put(st, "d", "x.wav", 2, st.new_card("A", "/a"))
    st.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE embeddings")
    db.execute("DROP TABLE pruned_embeddings")
    db.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    db.commit()
    db.close()
    st = ResultsStore(path)
    assert st.get_meta("schema_version") == 5 and st.count_embeddings() == 0
    assert st.files_without_embeddings("bb") == [("d", "x.wav")] and len(st.segments()[0]) == 2
    st.close()


def _tiny(seed: int = 0, labels: int = 2):
    import torch

    from monitor.model.ast import AST

    torch.manual_seed(seed)
    return AST(label_dim=labels, fstride=16, tstride=16, input_fdim=128, input_tdim=256, model_size="tiny224",
               depth=1)


def test_backbone_hash_ignores_the_head_and_is_recorded_or_computed(tmp_path):
    import torch

    from monitor.config import FbankConfig, Preprocess
    from monitor.model.bundle import load_bundle, save_bundle

    pre = Preprocess(fbank=FbankConfig(target_frames=256))
    m = _tiny()
    a = save_bundle(tmp_path / "a", m, name="a", version="1", labels=["x", "y"], task="multilabel",
                    preprocessing=pre, thresholds={"x": 0.5, "y": 0.5})
    other_head = _tiny(labels=3)
    other_head.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("mlp_head.1.")},
                               strict=False)
    with torch.no_grad():
        other_head.mlp_head[0].weight.mul_(2)
    b = save_bundle(tmp_path / "b", other_head, name="b", version="1", labels=["x", "y", "z"], task="multilabel",
                    preprocessing=pre, thresholds={"x": 0.5, "y": 0.5, "z": 0.5})
    assert a.backbone_sha256 and a.backbone_sha256 == b.backbone_sha256 and a.sha256 != b.sha256
    c = save_bundle(tmp_path / "c", _tiny(seed=1), name="c", version="1", labels=["x", "y"], task="multilabel",
                    preprocessing=pre, thresholds={"x": 0.5, "y": 0.5})
    assert c.backbone_sha256 != a.backbone_sha256
    d = save_bundle(tmp_path / "d", m, name="d", version="1", labels=["x", "y"], task="multilabel",
                    preprocessing=Preprocess(fbank=FbankConfig(target_frames=256, norm_mean=-3.0)),
                    thresholds={"x": 0.5, "y": 0.5})
    assert d.backbone_sha256 != a.backbone_sha256  # another front end: other embeddings
    # a bundle made before the hash was recorded: computed on demand, the same value
    meta = json.loads((tmp_path / "a" / "bundle.json").read_text())
    del meta["weights"]["backbone_sha256"]
    (tmp_path / "a" / "bundle.json").write_text(json.dumps(meta))
    old = load_bundle(tmp_path / "a")
    assert old.backbone_sha256 == "" and old.backbone() == a.backbone_sha256
    # fp16 weights: the hash of what is stored (cast to float32), again equal for a head-only change
    e = save_bundle(tmp_path / "e", m, name="e", version="1", labels=["x", "y"], task="multilabel",
                    preprocessing=pre, thresholds={"x": 0.5, "y": 0.5}, fp16=True)
    meta = json.loads((tmp_path / "e" / "bundle.json").read_text())
    del meta["weights"]["backbone_sha256"]
    (tmp_path / "e" / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(tmp_path / "e").backbone() == e.backbone_sha256 != a.backbone_sha256


def test_head_scores_do_not_depend_on_the_batch():
    import torch

    from monitor.model.head import Head

    m = _tiny(labels=5)
    head = Head.from_module(m.mlp_head)
    emb = torch.randn(1000, 192).half()
    whole = head.scores(emb, "multilabel")
    parts = torch.cat([head.scores(emb[i:i + 7], "multilabel") for i in range(0, 1000, 7)])
    assert torch.equal(whole, parts) and whole.dtype == torch.float32
    ref = torch.sigmoid(m.mlp_head(emb.float())).detach()
    assert float((whole - ref).abs().max()) < 1e-5  # the float64 head is the model's own head


def test_brute_force_search_is_exact_and_skips_what_it_is_told():
    from monitor.agile.index import SegmentIndex

    rng = np.random.default_rng(0)
    vec = rng.standard_normal((5000, 64)).astype(np.float16)
    idx = SegmentIndex(vec)
    q = vec[[17, 4000]].astype(np.float32)
    rows, sim = idx.search(q, 10)
    exact = idx.similarity(q)
    assert rows.tolist() == np.argsort(-exact, kind="stable")[:10].tolist()
    assert np.allclose(sim, exact[rows]) and (np.diff(sim) <= 0).all()
    rows1, sim1 = idx.search(vec[[17]], 3)
    assert rows1[0] == 17 and sim1[0] == pytest.approx(1.0)
    norms = np.sqrt((vec.astype(np.float32) ** 2).sum(axis=1))
    fast = SegmentIndex(vec.copy(), norms)  # the stored lengths instead of a normalised copy: the same answers
    assert fast.scale is not None and np.array_equal(fast.search(q, 10)[0], rows)
    assert np.allclose(fast.search(q, 10)[1], sim)
    skip = np.zeros(5000, bool)
    skip[17] = True
    assert 17 not in idx.search(vec[[17]], 3, skip)[0].tolist()


def test_run_config_refuses_embeddings_where_they_cannot_be_kept():
    for kw in ({"engine": "ray"}, {"precision": "int8"}, {"compile": True}, {"models": ["a", "b"]}):
        with pytest.raises(ConfigError, match="embeddings"):
            RunConfig("in", "out", embeddings=True, **kw)
    RunConfig("in", "out", embeddings=True)


def test_embeddings_source_needs_an_output_folder(tmp_path):
    from monitor.errors import MonitorError
    from monitor.train.config import build_config
    from monitor.train.embedded import load_embedded

    cfg = build_config({"data": {"source": "embeddings"}})
    with pytest.raises(MonitorError, match="data.out"):
        load_embedded(cfg)
    with pytest.raises(ConfigError):
        build_config({"data": {"source": "embeddings", "weak_negative_weight": 0}})
    with pytest.raises(ConfigError, match="unknown|weak_negs"):
        build_config({"data": {"source": "embeddings", "weak_negs": 3}})
    cfg = build_config({"data": {"source": "embeddings", "out": "OUT"}}, tmp_path)
    assert cfg.data.out == str(tmp_path / "OUT")
