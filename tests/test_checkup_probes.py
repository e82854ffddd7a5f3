"""Concept probes and their causal check: metrics against brute force, a planted signal found at
its layer, thresholds that keep their false-positive promise, the data library, round trips."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aimri.checkup.causal import (
    BehaviourRunner,
    CausalSettings,
    behaviour_batch,
    behaviour_metric,
    causal_check,
)
from aimri.checkup.concepts import (
    BUILTIN_CONCEPTS,
    CONCEPTS_VERSION,
    MIN_PAIRS,
    BehaviourItem,
    ConceptSet,
    builtin_concepts,
    builtin_neutral_texts,
    load_concepts,
)
from aimri.checkup.probe_fit import (
    ConceptRows,
    Pooled,
    best_of,
    cv_scores,
    feature_rows,
    fit_directions,
    layer_rows,
)
from aimri.checkup.probe_metrics import auroc_columns, split_pairs, threshold_at_fpr
from aimri.checkup.probes import load_probe_directions, probe_concepts, save_probe_directions
from aimri.config import DictConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.errors import AimriError
from aimri.features.summary import auroc
from aimri.steer.directions import mean_difference
from aimri.steer.edits import AddDirection
from aimri.steer.generate import prompt_ids

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "python",
    "language",
    "monday",
    "friday",
]


def _toy_concept(name: str, n_pairs: int, n_behaviour: int = 4) -> ConceptSet:
    """Pairs that differ in one word, 'quick' vs 'lazy', inside varied filler."""
    pairs = tuple(
        (
            f"User: {WORDS[i % 12]} {WORDS[(i * 5) % 12]}\nAssistant: the quick fox {i}",
            f"User: {WORDS[i % 12]} {WORDS[(i * 5) % 12]}\nAssistant: the lazy dog {i}",
        )
        for i in range(n_pairs)
    )
    behaviour = tuple(
        BehaviourItem(f"User: {WORDS[i]} {WORDS[i + 1]}\nAssistant:", " quick fox", " lazy dog")
        for i in range(n_behaviour)
    )
    return ConceptSet(name, "1", "toy", "quick", "lazy", pairs, behaviour, source="test")


# ---- metrics ---------------------------------------------------------------------------------


def test_auroc_columns_matches_a_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 4, (9, 5), generator=g).float()  # small integers: many ties
    neg = torch.randint(0, 4, (7, 5), generator=g).float()
    got = auroc_columns(pos, neg)
    for k in range(5):
        wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos[:, k] for n in neg[:, k])
        assert float(got[k]) == pytest.approx(wins / (9 * 7))
        assert float(got[k]) == pytest.approx(auroc(pos[:, k].tolist(), neg[:, k].tolist()))


@pytest.mark.parametrize("n", [10, 99, 100, 250, 1000])
def test_threshold_at_fpr_flags_at_most_that_share_and_no_fewer_than_needed(n):
    g = torch.Generator().manual_seed(n)
    scores = torch.randint(0, 50, (n,), generator=g).float()  # ties at the threshold too
    t = threshold_at_fpr(scores, 0.01)
    above = int((scores > t).sum())
    assert above <= math.floor(0.01 * n)
    # Tight: the next lower observed score would flag more than allowed (or t is the minimum).
    lower = scores[scores < t]
    if len(lower):
        assert int((scores > lower.max()).sum()) > math.floor(0.01 * n)


def test_pairs_never_straddle_the_split():
    split = split_pairs(42, 0.3, seed=5)
    assert not set(split.train) & set(split.test)
    assert sorted(split.train + split.test) == list(range(42))
    assert len(split.test) == round(0.3 * 42)
    rows = ConceptRows(start=10, split=split, calib=[], neutral_test=[])
    train_rows = set(rows.pos(split.train) + rows.neg(split.train))
    test_rows = set(rows.pos(split.test) + rows.neg(split.test))
    for i in range(42):  # both texts of pair i are on one side
        pair = {10 + 2 * i, 10 + 2 * i + 1}
        assert pair <= train_rows or pair <= test_rows


# ---- a planted signal in synthetic activations -------------------------------------------------


def _planted(n_pairs=40, n_neutral=200, layers=4, d=64, signal_layer=2, strength=3.0, seed=0):
    """Pooled-like activations [n, L, d]: pair i's positive and negative share a random base;
    at `signal_layer` the positive one is moved along a dense planted direction."""
    g = torch.Generator().manual_seed(seed)
    v = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    base = torch.randn(n_pairs, layers, d, generator=g)
    pos = base + 0.5 * torch.randn(n_pairs, layers, d, generator=g)
    neg = base + 0.5 * torch.randn(n_pairs, layers, d, generator=g)
    pos[:, signal_layer] += strength * v
    X = torch.stack([pos, neg], dim=1).reshape(2 * n_pairs, layers, d)
    neutral = torch.randn(n_neutral, layers, d, generator=g)
    X = torch.cat([X, neutral])
    idx = list(range(2 * n_pairs, 2 * n_pairs + n_neutral))
    rows = ConceptRows(0, split_pairs(n_pairs, 0.3, seed), idx[::2], idx[1::2])
    return X, rows, v


def test_a_planted_direction_is_found_at_its_layer_and_random_directions_are_chance():
    X, rows, v = _planted()
    layers = [0, 1, 2, 3]
    dirs = fit_directions(X, rows)
    cv = cv_scores(X, rows, mean_difference)
    assert best_of(cv) == 2  # chosen on train folds only
    rand = torch.nn.functional.normalize(torch.randn(32, X.shape[-1]), dim=-1)
    table = layer_rows(X, dirs, cv.auroc, rows, layers, rand)
    hit = table[2]
    assert hit.dom_auroc > 0.9 and hit.probe_auroc > 0.85
    assert float(dirs.dom[2] @ v) > 0.7  # the fitted direction is the planted one
    for row in table:
        assert 0.5 <= row.random_auroc_mean < 0.7  # sign-agnostic, so at least 0.5
    for row in (table[0], table[1], table[3]):
        assert row.dom_auroc < 0.85  # no signal planted there
    assert hit.neuron_auroc < hit.dom_auroc  # a dense direction beats any single neuron


def test_the_test_split_does_not_choose_the_layer():
    """Shuffling the test pairs' activations leaves the chosen layer unchanged."""
    X, rows, _ = _planted(seed=3)
    before = best_of(cv_scores(X, rows, mean_difference))
    X2 = X.clone()
    test_rows = rows.pos(rows.split.test) + rows.neg(rows.split.test)
    X2[test_rows] = torch.randn_like(X2[test_rows])
    assert best_of(cv_scores(X2, rows, mean_difference)) == before


def test_features_are_ranked_by_train_auroc_so_a_one_off_feature_does_not_win():
    X, rows, _ = _planted(n_pairs=30, n_neutral=20, d=32)
    n = len(X)
    F = torch.zeros(n, 16)
    train, test = rows.split
    F[rows.pos(train + test), 3] = 1.0 + torch.rand(30)  # fires on every positive text
    F[rows.pos(train)[:1], 7] = 50.0  # fires hard on one positive text only
    pooled = Pooled(X, torch.ones(n, 4), torch.ones(n), torch.ones(n, 4), F, F)
    sae = build_dictionary(DictConfig(d_in=32, d_sae=16, k=2))
    table = feature_rows(pooled, sae, fit_directions(X, rows), 2, rows, {3: "planted"})
    assert table[0].feature == 3 and table[0].label == "planted" and table[0].auroc == 1.0
    one_off = next(f for f in table if f.feature == 7)
    assert one_off.auroc == 0.5 and one_off.score_corr is None  # never fires on test texts


# ---- the data --------------------------------------------------------------------------------


def test_the_builtin_library_loads_six_versioned_concepts_with_enough_pairs():
    concepts = builtin_concepts()
    assert [c.name for c in concepts] == list(BUILTIN_CONCEPTS) and len(concepts) == 6
    assert CONCEPTS_VERSION
    for c in concepts:
        assert c.version and c.positive_label and c.negative_label
        assert len(c.pairs) >= 40 and len(c.behaviour) >= 12
        texts = [t for pair in c.pairs for t in pair]
        assert len(set(texts)) == len(texts), c.name
        assert all(t.startswith("User: ") and "\nAssistant:" in t for t in texts)
        fitted = set(texts)
        for b in c.behaviour:
            assert b.positive.startswith(" ") and b.negative.startswith(" ")
            assert b.positive != b.negative
            assert b.prompt + b.positive not in fitted  # held out
    neutral = builtin_neutral_texts()
    assert len(neutral) >= 90 and all(t.startswith("User: ") for t in neutral)


def _write(path, **changes):
    doc = {
        "schema_version": 1,
        "concept": "mine",
        "version": "1",
        "description": "d",
        "positive_label": "a",
        "negative_label": "b",
        "pairs": [{"positive": f"p{i}", "negative": f"n{i}"} for i in range(MIN_PAIRS)],
        "behaviour": [{"prompt": "q", "positive": " a", "negative": " b"}] * 4,
    }
    doc.update(changes)
    path.write_text(json.dumps(doc))
    return path


def test_a_users_own_file_loads_and_bad_files_say_what_is_wrong(tmp_path):
    (c,) = load_concepts([_write(tmp_path / "ok.json")])
    assert c.name == "mine" and len(c.pairs) == MIN_PAIRS and c.source.endswith("ok.json")
    with pytest.raises(AimriError, match="schema_version"):
        load_concepts([_write(tmp_path / "v.json", schema_version=7)])
    with pytest.raises(AimriError, match="'positive_label'"):
        load_concepts([_write(tmp_path / "l.json", positive_label="")])
    with pytest.raises(AimriError, match=r"pairs\[3\]"):
        pairs = [{"positive": "x", "negative": "y"}] * 3 + [{"positive": "x"}]
        load_concepts([_write(tmp_path / "p.json", pairs=pairs * 5)])
    with pytest.raises(AimriError, match="more than one file"):
        load_concepts([tmp_path / "ok.json", _write(tmp_path / "again.json")])


def test_a_set_too_small_to_train_names_the_concept_the_counts_and_the_minimum(tmp_path):
    small = [{"positive": f"p{i}", "negative": f"n{i}"} for i in range(10)]
    with pytest.raises(AimriError) as e:
        load_concepts([_write(tmp_path / "s.json", concept="tiny_set", pairs=small)])
    msg = str(e.value)
    assert "'tiny_set'" in msg and "10 pairs" in msg and str(MIN_PAIRS) in msg and "add" in msg


def test_a_split_too_small_to_test_is_refused_before_any_forward_pass(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(AimriError, match=r"'toy'.*\d+ to train and \d+ to test"):
        probe_concepts(model, [_toy_concept("toy", 16)], ["x"] * 20, test_fraction=0.05)
    with pytest.raises(AimriError, match="neutral texts"):
        probe_concepts(model, [_toy_concept("toy", 16)], ["x"] * 3)


# ---- on a tiny model ---------------------------------------------------------------------------


def test_causal_check_at_strength_zero_is_the_unsteered_metric(tiny_model):
    model = tiny_model("llama")
    concept = _toy_concept("toy", 16)
    direction = torch.randn(model.info.d_model, generator=torch.Generator().manual_seed(1))
    check = causal_check(
        model, concept, site="blocks.1.hook_resid_post", direction=direction,
        strengths=(0.0, 1.0), n_random=2, scale=3.0,
    )  # fmt: skip
    assert check.points[0].strength == 0.0
    assert check.points[0].metric == pytest.approx(check.unsteered, abs=1e-6)
    assert check.points[1].metric != pytest.approx(check.unsteered, abs=1e-6)
    both = causal_check(
        model, concept, site="blocks.1.hook_resid_post", direction=direction,
        strengths=(-1.0, 1.0), n_random=2, scale=3.0,
    )  # fmt: skip
    assert both.effect == pytest.approx((both.points[1].metric - both.points[0].metric) / 2)
    assert check.effect == pytest.approx(both.effect, abs=1e-6)  # −1 measured apart
    assert check.random_effects == pytest.approx(both.random_effects, abs=1e-6)  # seeded
    assert len(check.random_effects) == 2 and check.verdict and "nats" in check.finding


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_behaviour_metric_with_a_shared_prompt_equals_scoring_each_sequence(tiny_model, family):
    """The prompt's KV cache serves both completions; the result must equal running every
    prompt + completion on its own, with and without an edit."""
    model = tiny_model(family)
    items = [
        BehaviourItem("User: the quick\nAssistant:", " brown fox", " lazy dog jumps"),
        BehaviourItem("User: def add(a, b):\n    return", " a + b", " x"),
    ]
    batch = behaviour_batch(model, items)
    edit = AddDirection("blocks.1.hook_resid_post", torch.ones(model.info.d_model), 2.0)
    for patches in ({}, edit.patches(model)):
        diffs = []
        for item in items:
            prompt = prompt_ids(model, item.prompt)
            logp = []
            for completion in (item.positive, item.negative):
                tail = model.tokenizer(completion, add_special_tokens=False)["input_ids"]
                logits = model.run(torch.tensor([prompt + tail]), patch=patches).logits
                assert logits is not None
                lp = logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
                logp.append(float(lp.gather(-1, torch.tensor(tail)[:, None]).mean()))
            diffs.append(logp[0] - logp[1])
        expected = sum(diffs) / len(diffs)
        assert behaviour_metric(model, batch, patches) == pytest.approx(expected, abs=1e-5)


def test_probe_concepts_end_to_end_on_a_tiny_model_and_directions_round_trip(tiny_model, tmp_path):
    model = tiny_model("llama")
    site = "blocks.1.hook_resid_post"
    sae = build_dictionary(DictConfig(d_in=model.info.d_model, d_sae=64, k=4, site=site))
    concepts = [_toy_concept("toy", 20), _toy_concept("other", 16)]
    neutral = [f"User: {w} {v}\nAssistant: {v}" for w in WORDS for v in WORDS[:2]]
    result = probe_concepts(
        model, concepts, neutral, dictionary=sae, feature_labels={0: "zero"}, n_random=8,
        causal=CausalSettings(n_random=2),
    )  # fmt: skip
    first = result.concepts[0]
    assert first.n_train_pairs + first.n_test_pairs == 20
    assert [row.layer for row in first.layers] == list(range(model.info.n_layers))
    assert first.features and first.feature_site == site
    assert [c.target for c in first.causal] == ["direction", "feature"]
    json.dumps(result.to_json(), allow_nan=True)  # JSON-able
    assert result.settings.n_neutral_calibration + result.settings.n_neutral_test == len(neutral)
    d = result.directions["toy"]
    assert float(d.direction.norm()) == pytest.approx(1.0, abs=1e-5)

    save_probe_directions(result, tmp_path / "dirs")
    loaded = load_probe_directions(tmp_path / "dirs")
    assert set(loaded) == {"toy", "other"}
    for name, original in result.directions.items():
        assert torch.equal(loaded[name].direction, original.direction.float())
        assert loaded[name].threshold == original.threshold and loaded[name].site == original.site


def test_load_probe_directions_refuses_mismatched_files(tmp_path):
    (tmp_path / "probe_directions.json").write_text(
        json.dumps({"schema_version": 1, "directions": {"x": {}}})
    )
    with pytest.raises(AimriError, match="not found"):
        load_probe_directions(tmp_path)


@pytest.mark.e2e
def test_smollm2_separates_harmful_from_harmless_requests(smollm2):
    (concept,) = builtin_concepts(["harmful_request"])
    result = probe_concepts(
        smollm2, [concept], builtin_neutral_texts()[:40], layers=[12, 20], causal=None
    )
    det = result.concepts[0].detector
    assert det.auroc > 0.85
    row = next(r for r in result.concepts[0].layers if r.layer == det.layer)
    assert det.auroc > row.random_auroc_p95


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_replaying_the_blocks_before_an_edit_gives_the_metric_of_the_whole_pass(tiny_model, family):
    """BehaviourRunner recomputes only from the first edited block on; every edit, at every
    layer and kind of site, must give what the full two passes give."""
    model = tiny_model(family)
    items = [
        BehaviourItem("User: the quick\nAssistant:", " brown fox", " lazy dog jumps"),
        BehaviourItem("User: def add(a, b):\n    return", " a + b", " x"),
        BehaviourItem("Hi", " there", " you all"),
    ]
    batch = behaviour_batch(model, items)
    runner = BehaviourRunner(model, batch)
    g = torch.Generator().manual_seed(0)
    assert runner.metric({}) == pytest.approx(behaviour_metric(model, batch, {}), abs=1e-6)
    for layer in range(model.info.n_layers):
        for kind in ("hook_resid_post", "hook_resid_pre", "hook_mlp_out"):
            u = torch.randn(model.info.d_model, generator=g)
            patches = AddDirection(f"blocks.{layer}.{kind}", u, 3.0).patches(model)
            full = behaviour_metric(model, batch, patches)
            assert runner.metric(patches) == pytest.approx(full, abs=1e-5)
            assert full != pytest.approx(runner.metric({}), abs=1e-4)  # the edit did something
