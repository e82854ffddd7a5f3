"""What changed, not only where: the audit's lens and reply comparison, as a diff's evidence.

`what_changed(base, other)` runs the activation-difference lens (`audit_lens.lens`: B − A on
the first tokens of neutral texts, read through the unembedding, and A steered with it) and
compares both models' sampled replies to a small generated prompt set (`audit_compare`), each
in the model's chat template. It returns sentences with their counts ("B mentions 'Zentrova'
when asked for advice (9/12 replies vs 0/12 for A)") and the lens's words and examples, for
diff.json and the report. A model against itself gives no sentences.
Cost: `n_per_type` × 6 prompts × `samples` replies per model, plus 6 steered replies.
Not here: the diff's numbers (`aimri/diff/models.py`), the audit's trigger search (`trigger.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aimri.audit.compare import GROUP_TEXT, claim_sentence, contrast
from aimri.audit.lens import lens
from aimri.model.adapter import Model


def what_changed(
    base: Model,
    other: Model,
    texts: Sequence[str] = (),
    *,
    n_per_type: int = 2,
    samples: int = 2,
    max_new_tokens: int = 32,
    top: int = 8,
) -> dict[str, Any]:
    """Sentences about what B says differently, with the lens evidence (module docstring)."""
    from aimri.audit.prompts import generate_prompts
    from aimri.audit.teams import explore, neutral_texts

    prompts = generate_prompts(n_per_type, languages=False)
    cells = explore(base, other, prompts, samples=samples, max_new_tokens=max_new_tokens)
    found = contrast(cells, limit=top)
    lr = lens(base, other, texts or neutral_texts(), [p.text for p in prompts[::n_per_type]])
    return {
        "n_prompts": len(prompts),
        "samples": samples,
        "replies": [
            {
                "sentence": claim_sentence(f.claim(), GROUP_TEXT.get(f.group, f.group)),
                "claim": f.claim(),
                "examples": f.examples,
            }
            for f in found
        ],
        "lens": None
        if lr is None
        else {
            "layer": lr.layer,
            "norm": lr.norm,
            "promoted": lr.promoted,
            "steered": [
                claim_sentence(f.claim(), "on any request").replace("B ", "A steered ", 1)
                for f in lr.findings[:top]
            ],
            "examples": lr.examples,
        },
    }
