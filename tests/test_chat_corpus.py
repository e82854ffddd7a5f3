"""The built-in chat corpus: what it holds, its provenance, and a held-out split that shares no
topic and no wording with the text the scan trains on."""

from __future__ import annotations

import itertools

from aimri import CorpusConfig, take_contexts
from aimri.corpus.chat import corpus_path, read_corpus, requests_of
from aimri.corpus.chat_topics import EVERYDAY, HELD_OUT, TRAIN
from aimri.corpus.sources import iter_documents


def test_held_out_generator_shares_no_topic_or_request_with_train():
    topics = lambda g: {t for ts in g.topics.values() for t in ts} | set(EVERYDAY[g.name])  # noqa: E731
    assert not topics(TRAIN) & topics(HELD_OUT)
    for field in ("chat_requests", "prose_requests", "advice_requests"):
        assert not set(getattr(TRAIN, field)) & set(getattr(HELD_OUT, field))
    assert TRAIN.seed != HELD_OUT.seed
    questions = lambda g: {r.text for r in requests_of(g)}  # noqa: E731
    assert not questions(TRAIN) & questions(HELD_OUT)


def test_shipped_files_hold_chats_and_prose_made_by_the_generators_they_name(smollm2):
    for gen in (TRAIN, HELD_OUT):
        header, docs = read_corpus(corpus_path(gen.name))
        assert header["generator"] == gen.name and header["seed"] == gen.seed
        assert header["n_documents"] == len(docs) > 200
        asked = {r.text for r in requests_of(gen)}
        assert {d["request"] for d in docs} <= asked, "every document answers one of its requests"
        kinds = {d["kind"] for d in docs}
        assert kinds == {"chat", "prose"}
        chat = next(d for d in docs if d["kind"] == "chat")
        assert (
            chat["text"].startswith("<|im_start|>system")
            and "<|im_start|>assistant" in chat["text"]
        )
        assert all("<|im_start|>" not in d["text"] for d in docs if d["kind"] == "prose")
        assert len({d["topic"] for d in docs}) > 100
    # the chat template's markers are the model's own special tokens, not text
    ids = take_contexts(smollm2.tokenizer, CorpusConfig(max_tokens=4096)).reshape(-1).tolist()
    assert smollm2.tokenizer.convert_tokens_to_ids("<|im_start|>") in ids


def test_builtin_sources_are_deterministic_and_the_splits_differ():
    def take(src, seed):
        return list(itertools.islice(iter_documents(CorpusConfig(source=src, seed=seed)), 50))

    assert take("builtin", 0) == take("builtin", 0) != take("builtin", 1)
    assert not set(take("builtin", 0)) & set(take("builtin-held-out", 0))
    assert any("def " in d for d in take("pydoc", 0)), "the Python docs stay available"
