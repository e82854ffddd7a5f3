"""Graph features named by the words they fire on: the index holds each feature's true top
activations, and a label names whole words, not pieces."""

from __future__ import annotations

import torch

from aimri.circuits.annotate import firing_index, logit_labels, word_at, word_labels
from aimri.circuits.attribute import AttributionSettings, attribute
from aimri.config import CorpusConfig
from aimri.corpus.contexts import take_contexts
from tests.test_circuits import PROMPT, transcoders_for


def test_the_index_holds_each_features_largest_activations(tiny_model):
    model = tiny_model("llama")
    tcs = transcoders_for(model)
    ctx = take_contexts(
        model.tokenizer, CorpusConfig(source="pydoc", max_tokens=32 * 12, ctx_len=32)
    )
    index = firing_index(model, tcs, ctx, k=4, batch=5)  # batches that split the text unevenly
    layer = 1
    x = (
        model.run(ctx, read=[f"blocks.{layer}.ln2.hook_normalized"])
        .acts[f"blocks.{layer}.ln2.hook_normalized"]
        .float()
    )
    x[:, 0] = 0
    dense = tcs[layer].encode(x.reshape(-1, x.shape[-1])).to_dense(64).float()
    top = dense.topk(4, dim=0)
    torch.testing.assert_close(index.values[layer], top.values)
    # ties aside, the positions are where those values sit
    torch.testing.assert_close(dense.gather(0, index.positions[layer]), top.values)
    assert not (index.positions[layer] % 32 == 0).any() or (index.values[layer] == 0).all()


def test_a_label_names_whole_words_where_the_feature_fires(tiny_model):
    model = tiny_model("llama")
    tok = model.tokenizer
    ids = torch.tensor(tok("the codecs work well").input_ids)
    pieces = [tok.decode([i]) for i in ids.tolist()]
    inside = next(i for i, p in enumerate(pieces) if p and not p.startswith(" ") and i > 1)
    assert word_at(tok, ids, inside) in {"codecs", "work", "well"}
    assert all(word_at(tok, ids, i) in {"the", "codecs", "work", "well"} for i in range(len(ids)))

    tcs = transcoders_for(model)
    graph = attribute(model, tcs, PROMPT, AttributionSettings(progress=False))
    ctx = take_contexts(tok, CorpusConfig(source="pydoc", max_tokens=32 * 8, ctx_len=32))
    labels = word_labels(
        model, firing_index(model, tcs, ctx), graph, logit_labels(model, tcs, graph)
    )
    kept = graph.node_mask[: graph.n_features].nonzero().flatten()
    assert len(labels) == len({(L, f) for L, _, f in graph.features[kept].tolist()}) > 0
    text = tok.decode(ctx.reshape(-1).tolist())
    for label in labels.values():
        assert "→" in label, "the output side is kept"
        for word in label.split("“")[1:]:
            assert word.split("”")[0] in text, "every named word is in the text"
