"""Monitoring during generation: the text is untouched, alerts fire exactly where the plain
forward pass's scores cross, padding and unread tokens never alert, log and callback agree."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from aimri.config import DictConfig
from aimri.dicts.dictionary import build_dictionary
from aimri.errors import AimriError
from aimri.ledger import read_ledger
from aimri.steer.edits import feature_activation
from aimri.steer.generate import Generation, generate
from aimri.steer.monitor import Alert, Watch, monitored_generate

SITE = "blocks.1.hook_resid_post"
PROMPTS = ["The quick brown fox jumps", "def add", "Monday, Tuesday, Wednesday, Thursday"]
N_NEW = 8


def sae(seed: int = 0):
    return build_dictionary(DictConfig(d_in=32, d_sae=64, k=4, site=SITE), seed=seed)


def full_acts(model, g: Generation) -> torch.Tensor:
    """[S, d] the site's activations over the prompt and its continuation, one plain pass."""
    ids = torch.tensor([g.prompt_ids + g.new_ids])
    return model.run(ids, read=[SITE], logits=False).acts[SITE][0].float()


def read_positions(g: Generation, check: str) -> list[int]:
    """Positions the model reads: all but the last token (nothing follows it)."""
    start = 0 if check == "all" else len(g.prompt_ids)
    return list(range(start, len(g.prompt_ids) + len(g.new_ids) - 1))


def test_monitoring_changes_neither_the_greedy_nor_the_sampled_text(tiny_model):
    model = tiny_model("llama")
    torch.manual_seed(0)
    watches = [
        Watch.of_direction("d", SITE, torch.randn(32), 0.0),
        Watch.of_feature("f", sae(), 3, 0.0),
    ]
    for temperature in (0.0, 1.0):
        kw = {"max_new_tokens": N_NEW, "temperature": temperature, "batch_size": 2}
        plain = generate(model, PROMPTS, **kw)
        mon = monitored_generate(model, PROMPTS, watches, check="all", **kw)
        assert mon.generations == plain
        assert mon.alerts and mon.tokens == sum(len(g.new_ids) for g in plain)


@pytest.mark.parametrize("check", ["all", "generated"])
def test_every_read_position_is_scored_as_a_plain_forward_scores_it_and_padding_never(
    tiny_model, check
):
    model = tiny_model("llama")
    torch.manual_seed(1)
    direction, d = torch.randn(32), sae()
    watches = [
        Watch.of_direction("d", SITE, direction, -1e9),  # below every score: all positions
        Watch.of_feature("f", d, 5, -1e9),
    ]
    mon = monitored_generate(
        model, PROMPTS, watches, max_new_tokens=N_NEW, check=check, batch_size=2
    )
    assert len({len(g.prompt_ids) for g in mon.generations}) == 3  # left padding in a batch
    eos = model.tokenizer.eos_token_id  # one row ends early; the batch goes on after it
    assert any(g.new_ids[-1] == eos and len(g.new_ids) < N_NEW for g in mon.generations)
    for i, g in enumerate(mon.generations):
        acts = full_acts(model, g)
        want = read_positions(g, check)
        for name, plain in (("d", acts @ direction), ("f", feature_activation(d, acts, 5))):
            mine = [a for a in mon.alerts if a.prompt == i and a.watch == name]
            assert [a.position for a in mine] == want  # no pad, no unread last token
            got = torch.tensor([a.value for a in mine])
            torch.testing.assert_close(got, plain[want], atol=1e-4, rtol=1e-4)
        for a in mon.alerts:
            if a.prompt == i:
                n = len(g.prompt_ids)
                assert a.step == (a.position - n if a.position >= n else None)


def planted(model, prompt_index: int = 0, step: int = 2):
    """A direction = the site's activation at generated token `step` of one prompt, and a
    threshold halfway between its own score there and the next clearly lower score."""
    g = generate(model, PROMPTS, max_new_tokens=N_NEW)[prompt_index]
    acts = full_acts(model, g)
    target = len(g.prompt_ids) + step
    direction = acts[target].clone()
    read = read_positions(g, "generated")
    proj = acts[read] @ direction
    mine = float(acts[target] @ direction)
    below = proj[proj < mine - 1e-2 * abs(mine)]  # a repeated token scores (almost) the same
    threshold = (mine + float(below.max())) / 2 if len(below) else mine - 1.0
    assert min(abs(float(p) - threshold) for p in proj) > 1e-3 * abs(threshold)
    expected = [p for p, v in zip(read, proj.tolist(), strict=True) if v >= threshold]
    assert target in expected
    return Watch.of_direction("planted", SITE, direction, threshold), expected, g


def test_a_planted_direction_alerts_exactly_where_its_score_crosses(tiny_model, tmp_path):
    model = tiny_model("llama")
    watch, expected, g = planted(model)
    seen: list[Alert] = []
    log = tmp_path / "logs" / "alerts.jsonl"
    mon = monitored_generate(
        model, PROMPTS, [watch], max_new_tokens=N_NEW, on_alert=seen.append, log_path=log
    )
    mine = [a for a in mon.alerts if a.prompt == 0]
    assert [a.position for a in mine] == expected
    ids = g.prompt_ids + g.new_ids
    assert [a.token for a in mine] == [model.tokenizer.decode([ids[p]]) for p in expected]
    assert all(a.value >= a.threshold == watch.threshold for a in mon.alerts)
    assert seen == mon.alerts  # the callback: once per alert, in order
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == [asdict(a) for a in mon.alerts]
    monitored_generate(model, PROMPTS[:1], [watch], max_new_tokens=N_NEW, log_path=log)
    assert len(log.read_text().splitlines()) == len(lines) + len(mine)  # appended


def test_monitoring_without_the_kv_cache_raises_the_same_alerts(tiny_model):
    model = tiny_model("llama")
    watch, _, _ = planted(model)
    runs = [
        monitored_generate(model, PROMPTS, [watch], max_new_tokens=N_NEW, use_cache=cache)
        for cache in (True, False)
    ]
    key = [[(a.prompt, a.position, a.step, a.token) for a in r.alerts] for r in runs]
    assert key[0] == key[1] and key[0]
    assert runs[0].generations == runs[1].generations
    for a, b in zip(runs[0].alerts, runs[1].alerts, strict=True):
        assert a.value == pytest.approx(b.value, rel=1e-4)


def test_stop_on_alert_ends_only_the_alerting_row_before_what_its_flagged_state_wrote(
    tiny_model,
):
    model = tiny_model("llama")
    watch, expected, _ = planted(model, prompt_index=2, step=3)
    plain = generate(model, PROMPTS, max_new_tokens=N_NEW)
    mon = monitored_generate(model, PROMPTS, [watch], max_new_tokens=N_NEW, stop_on_alert=True)
    first = expected[0] - len(plain[2].prompt_ids)  # the generated token read at the alert
    assert 2 in mon.stopped and first + 1 < N_NEW
    assert mon.generations[2].new_ids == plain[2].new_ids[: first + 1]
    assert [a.position for a in mon.alerts if a.prompt == 2] == expected[:1]
    for i in set(range(3)) - set(mon.stopped):
        assert mon.generations[i] == plain[i]


def test_bad_watches_are_refused_with_the_reason_and_the_fix(tiny_model, tmp_path):
    model = tiny_model("llama")
    d = sae()
    with pytest.raises(AimriError, match=r"feature 64 does not exist.*64 features \(0-63\)"):
        Watch.of_feature("x", d, 64, 1.0)
    with pytest.raises(AimriError, match="feature -1 does not exist"):
        Watch.of_feature("x", d, -1, 1.0)
    with pytest.raises(AimriError, match="not a finite number"):
        Watch.of_direction("x", SITE, torch.ones(32), float("nan"))
    with pytest.raises(AimriError, match="not both or neither"):
        Watch("x", SITE, 1.0, direction=torch.ones(32), dictionary=d, feature=1)
    with pytest.raises(AimriError, match="its dictionary reads"):
        Watch("x", "blocks.0.hook_resid_post", 1.0, dictionary=d, feature=1)
    bad = {
        "width 16": [Watch.of_direction("x", SITE, torch.ones(16), 1.0)],
        "blocks.9": [Watch.of_direction("x", "blocks.9.hook_resid_post", torch.ones(32), 1.0)],
        "named 'x'": [Watch.of_direction("x", SITE, torch.ones(32), 1.0)] * 2,
        "nothing to watch": [],
    }
    for message, watches in bad.items():
        with pytest.raises(AimriError, match=message):
            monitored_generate(model, PROMPTS, watches, max_new_tokens=2)


def test_monitoring_is_recorded_in_the_run_ledger(tiny_model, tmp_path):
    model = tiny_model("llama")
    watch = Watch.of_feature("f", sae(), 7, 0.5)
    monitored_generate(model, PROMPTS[:1], [watch], max_new_tokens=2, run_dir=tmp_path)
    (entry,) = read_ledger(tmp_path)
    assert (entry.kind, entry.model_sha256) == ("monitor", model.weights_sha256)
    assert entry.detail["watches"] == [{"name": "f", "site": SITE, "threshold": 0.5, "feature": 7}]
