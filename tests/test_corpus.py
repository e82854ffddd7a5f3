"""Corpora: sources, determinism, BOS and document boundaries, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from aimri import AimriError, CorpusConfig, take_contexts
from aimri.corpus.builtin import builtin_documents, stdlib_files, topic_sections
from aimri.corpus.contexts import special_tokens


def test_builtin_corpus_is_diverse_and_deterministic():
    docs = [d for _, d in zip(range(60), builtin_documents(seed=0), strict=False)]
    assert docs == [d for _, d in zip(range(60), builtin_documents(seed=0), strict=False)]
    assert docs != [d for _, d in zip(range(60), builtin_documents(seed=1), strict=False)]
    assert len(stdlib_files()) > 200 and len(topic_sections()) > 50
    code = sum(("def " in d or "class " in d) and "    " in d for d in docs)
    assert 10 < code < 50, "a mix of code and prose"
    assert len(set(docs)) > 50


def test_contexts_deterministic_for_a_seed(tiny_model):
    tok = tiny_model("llama").tokenizer
    a = take_contexts(tok, CorpusConfig(max_tokens=2048, ctx_len=64))
    b = take_contexts(tok, CorpusConfig(max_tokens=2048, ctx_len=64))
    c = take_contexts(tok, CorpusConfig(max_tokens=2048, ctx_len=64, seed=1))
    assert a.shape == (32, 64) and torch.equal(a, b) and not torch.equal(a, c)


def test_bos_and_separators(tiny_model, text_corpus):
    tok = tiny_model("llama").tokenizer
    sp = special_tokens(tok, prepend_bos=True)
    assert sp.bos == tok.convert_tokens_to_ids("<|bos|>") and sp.separator == tok.eos_token_id
    x = take_contexts(tok, CorpusConfig(source=str(text_corpus), max_tokens=1024, ctx_len=32))
    assert torch.all(x[:, 0] == sp.bos)
    assert (x[:, 1:] == sp.bos).sum() == 0
    assert (x == sp.separator).sum() > 3, "packed documents are separated"
    no_bos = take_contexts(
        tok, CorpusConfig(source=str(text_corpus), max_tokens=1024, ctx_len=32, prepend_bos=False)
    )
    assert (no_bos == sp.bos).sum() == 0


def test_truncate_mode_starts_each_context_at_a_document(tiny_model, text_corpus):
    tok = tiny_model("llama").tokenizer
    x = take_contexts(
        tok, CorpusConfig(source=str(text_corpus), max_tokens=640, ctx_len=16, boundary="truncate")
    )
    starts = {tok.decode(row[1:]) for row in x}
    assert all(s.startswith("Document") for s in starts)
    assert (x == tok.eos_token_id).sum() == 0


def test_jsonl_parquet_and_datasets_sources_agree(tiny_model, tmp_path):
    tok = tiny_model("llama").tokenizer
    texts = [f"record number {i} says hello to the world of text" for i in range(50)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts))
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": texts}), tmp_path / "a.parquet")
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "ds"))
    outs = [
        take_contexts(
            tok,
            CorpusConfig(
                source=str(tmp_path / name), text_field="body", max_tokens=512, ctx_len=32
            ),
        )
        for name in ("a.jsonl", "a.parquet", "ds")
    ]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        ("", "text", "gave no context"),
        ('{"other": "x"}\n', "text", "has no text field 'text'"),
        ("not json\n", "text", "line 1 is not JSON"),
    ],
)
def test_bad_corpora_get_clear_errors(tiny_model, tmp_path, content, field, message):
    tok = tiny_model("llama").tokenizer
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(AimriError, match=message):
        take_contexts(
            tok, CorpusConfig(source=str(path), text_field=field, max_tokens=256, ctx_len=16)
        )


def test_missing_and_unreadable_corpora(tiny_model, tmp_path):
    tok = tiny_model("llama").tokenizer
    with pytest.raises(AimriError, match="corpus '/nope.txt' not found"):
        take_contexts(tok, CorpusConfig(source="/nope.txt"))
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(AimriError, match="cannot be read"):
        take_contexts(tok, CorpusConfig(source=str(binary), max_tokens=256, ctx_len=16))
    with pytest.raises(AimriError, match="ctx_len=1 is too small"):
        CorpusConfig(ctx_len=1)
