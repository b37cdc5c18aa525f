import gzip
import json
import os

import numpy as np
import pytest
from training_helpers import make_documents, write_corpus

from hymba.tokenizer import load_tokenizer
from hymba.training.data import (
    BatchSchedule,
    DataError,
    PackedDataset,
    PackedLoader,
    load_manifest,
    open_shards,
    prepare_dataset,
    split_documents,
    token_dtype,
    unigram_cross_entropy,
)


def _documents_of(shards, eos):
    """Split the concatenated token stream at EOS (EOS kept) -> list of documents' ids."""
    stream = np.concatenate([np.asarray(s, dtype=np.int64) for s in shards])
    ends = np.flatnonzero(stream == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [stream[s:e + 1].tolist() for s, e in zip(starts, ends)]


def test_split_documents_follows_the_gutenberg_separator():
    text = "book one\nline\n<|endoftext|>\nbook two\n<|endoftext|>\n\n<|endoftext|>\nbook three\n"
    assert split_documents(text) == ["book one\nline\n", "book two\n", "book three\n"]
    assert split_documents(text, None) == [text]


def test_prepare_every_format_round_trips_documents_separated_by_eos(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = make_documents(12, seed=1)
    txt = str(tmp_path / "a.txt")
    with open(txt, "w", encoding="utf-8") as f:
        f.write("<|endoftext|>\n".join(docs[:3]))
    gz = tmp_path / "b.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("<|endoftext|>\n".join(docs[3:6]))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[6:9])) + "\n")
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": docs[9:12], "n": [1, 2, 3]}), parquet)

    out = tmp_path / "data"
    manifest = prepare_dataset([txt, str(gz), str(jsonl), str(parquet)], str(out), 300, log=lambda s: None)
    tok = load_tokenizer(str(out / "tokenizer"))
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 300
    assert [s["documents"] for s in manifest["sources"]] == [3, 3, 3, 3]
    assert manifest["splits"]["train"]["documents"] == 12 and manifest["splits"]["val"]["tokens"] == 0
    shards = open_shards(str(out), "train")
    assert shards[0].dtype == np.uint16
    got = _documents_of(shards, tok.eos_token_id)
    assert len(got) == 12
    for ids, doc in zip(got, docs):
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id  # [BOS] text EOS
        assert tok.decode(ids[1:-1]) == doc  # byte-level BPE: exact round trip
    assert sum(s["tokens"] for s in manifest["sources"]) == manifest["splits"]["train"]["tokens"]


def test_token_dtype_widens_past_65536():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_validation_by_document_and_by_file(tmp_path):
    corpus = write_corpus(str(tmp_path), n_docs=50)
    m = prepare_dataset([corpus], str(tmp_path / "a"), 300, val_fraction=0.2, seed=3, log=lambda s: None)
    assert 0 < m["splits"]["val"]["documents"] < 50
    assert m["splits"]["val"]["documents"] + m["splits"]["train"]["documents"] == 50
    # the same seed draws the same documents
    m2 = prepare_dataset([corpus], str(tmp_path / "b"), 300, val_fraction=0.2, seed=3, log=lambda s: None)
    assert m2["splits"] == m["splits"]
    val_file = tmp_path / "val.txt"
    val_file.write_text(make_documents(1, seed=9)[0])
    m3 = prepare_dataset([corpus], str(tmp_path / "c"), 300, val_inputs=[str(val_file)], log=lambda s: None)
    assert m3["splits"]["val"]["documents"] == 1 and m3["splits"]["train"]["documents"] == 50


def test_a_single_document_lends_its_tail_to_validation(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text(" ".join(make_documents(20, seed=2)))
    m = prepare_dataset([str(one)], str(tmp_path / "d"), 300, val_fraction=0.1, log=lambda s: None)
    total = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
    assert m["val_tail_tokens"] == m["splits"]["val"]["tokens"] == round(0.1 * total)


def test_shards_roll_over_without_splitting_documents(tmp_path):
    corpus = write_corpus(str(tmp_path), n_docs=30)
    m = prepare_dataset([corpus], str(tmp_path / "d"), 300, shard_tokens=500, log=lambda s: None)
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 3
    tok = load_tokenizer(str(tmp_path / "d" / "tokenizer"))
    for arr in open_shards(str(tmp_path / "d"), "train"):
        assert arr[0] == tok.bos_token_id and arr[-1] == tok.eos_token_id  # whole documents only
    assert sum(s["documents"] for s in shards) == 30


def test_bad_input_names_the_file_and_line_and_leaves_nothing_behind(tmp_path):
    good = "".join(json.dumps({"text": d}) + "\n" for d in make_documents(5))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + '{"txt": "no text field"}\n')
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"bad.jsonl:6: expected an object with a string field 'text'"):
        prepare_dataset([str(bad)], str(out), 300, log=lambda s: None)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]
    (tmp_path / "notjson.jsonl").write_text("{oops\n")
    with pytest.raises(DataError, match=r"notjson.jsonl:1: not valid JSON"):
        prepare_dataset([str(tmp_path / "notjson.jsonl")], str(out), 300, log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        prepare_dataset([str(tmp_path / "missing.txt")], str(out), 300, log=lambda s: None)


def test_manifest_and_shard_sizes_are_checked(prepared, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shard = load_manifest(str(copy))["splits"]["train"]["shards"][0]["file"]
    with open(copy / shard, "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(DataError, match="says"):
        open_shards(str(copy), "train")
    with pytest.raises(DataError, match="no manifest.json"):
        load_manifest(str(tmp_path))


# ---- the packed loader ----------------------------------------------------------------------------------------------
def _shards(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 1000, n).astype(np.uint16) for n in lengths]


def test_every_token_is_a_target_once_per_epoch_and_windows_stay_inside_shards():
    shards = _shards([100, 37, 5, 64, 65])
    S = 8
    ds = PackedDataset(shards, S)
    assert len(ds) == sum((n - 1) // S for n in (100, 37, 5, 64, 65))
    loader = PackedLoader(ds, global_batch=3, seed=1)
    seen = []  # (shard, position) of every target token
    for _ in range(loader.schedule.steps_per_epoch):
        batch = loader.next_batch()["tokens"].numpy()
        assert batch.shape == (3, S + 1)
        for row in batch:
            # the window is a contiguous slice of exactly one shard
            hits = [(k, start) for k, sh in enumerate(shards) for start in range(0, len(sh) - S, S)
                    if np.array_equal(sh[start:start + S + 1], row)]
            assert len(hits) >= 1
            k, start = hits[0]
            seen += [(k, start + j) for j in range(1, S + 1)]
    covered = len(ds) // 3 * 3  # the incomplete last batch waits for the next epoch
    assert len(seen) == len(set(seen)) == covered * S
    if covered == len(ds):
        expected = {(k, p) for k, sh in enumerate(shards) for p in range(1, (len(sh) - 1) // S * S + 1)}
        assert set(seen) == expected


def test_full_epoch_covers_every_target_exactly_once():
    shards = _shards([33, 17, 50])
    ds = PackedDataset(shards, 4)  # 8 + 4 + 12 = 24 windows
    loader = PackedLoader(ds, global_batch=6, seed=5)
    targets = np.concatenate([loader.next_batch()["tokens"][:, 1:].numpy().ravel() for _ in range(4)])
    expected = np.concatenate([sh[1:(len(sh) - 1) // 4 * 4 + 1] for sh in shards])
    assert np.array_equal(np.sort(targets), np.sort(expected.astype(np.int64)))


def test_order_is_deterministic_from_the_seed_and_changes_each_epoch():
    a = BatchSchedule(40, 4, seed=7)
    b = BatchSchedule(40, 4, seed=7)
    c = BatchSchedule(40, 4, seed=8)
    run_a = [a.next_indices() for _ in range(20)]
    assert run_a == [b.next_indices() for _ in range(20)]
    assert run_a[:10] != [c.next_indices() for _ in range(10)]
    epoch0, epoch1 = sum(run_a[:10], []), sum(run_a[10:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(40)) and epoch0 != epoch1


def test_ranks_split_each_global_batch():
    single = BatchSchedule(50, 6, seed=2)
    ranks = [BatchSchedule(50, 6, rank=r, world_size=3, seed=2) for r in range(3)]
    for _ in range(12):
        assert single.next_indices() == sum((r.next_indices() for r in ranks), [])


def test_loader_state_resumes_exactly():
    ds = PackedDataset(_shards([200, 120]), 8)
    a = PackedLoader(ds, 4, seed=3)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch()["tokens"] for _ in range(10)]
    b = PackedLoader(ds, 4, seed=3)
    b.load_state_dict(json.loads(json.dumps(state)))
    for e in expected:
        assert np.array_equal(b.next_batch()["tokens"], e)
    with pytest.raises(DataError, match="global_batch"):
        PackedLoader(ds, 8, seed=3).load_state_dict(state)


def test_too_little_data_for_a_batch_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than one global batch"):
        BatchSchedule(3, 4)


def test_unigram_cross_entropy_by_hand():
    train = [np.array([0, 0, 1, 2])]
    val = [np.array([0, 1])]
    # add-one counts over 4 ids: [3, 2, 2, 1] / 8
    expected = -(np.log(3 / 8) + np.log(2 / 8)) / 2
    assert unigram_cross_entropy(train, val, 4) == pytest.approx(expected)  # float64: approx's 1e-6 is ample
