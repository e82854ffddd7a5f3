"""Monitor a model while it generates: alert when a probe direction or a dictionary feature
crosses a threshold.

A `Watch` scores one site at every position the model reads: a probe direction scores
activation·direction (raw, not normalised: fold a probe's bias into the threshold); a
dictionary feature scores that feature's activation from the dictionary's encoder (at its input
site). A position alerts when score ≥ threshold. `monitored_generate` runs `generate` with a
read-only patch at each watched site (the patch returns its input, so logits and text are
exactly those of plain generation) and, after every step, turns the step's crossings into
`Alert`s: the callback gets each one as it happens and the JSONL log gets one line each,
flushed. Alerts do not stop generation unless `stop_on_alert` is set.

Which positions are scored, per row of a left-padded batch (once each: with the KV cache a step
reads only the new token, without it the whole sequence again): never padding; the prompt's positions only with check="all"; every token
the model reads after them, up to the row's end. A row's last token is never read (nothing
follows it), so it is never scored: not the last of `max_new_tokens`, not an EOS, not the token
produced at a step that stopped the row. Scores at all watches of one site are one product:
directions as one [d, n] matmul, features by one encode per dictionary. BatchTopK dictionaries
select across the step's batch, so their scores depend on the batch.

Not here: making the directions (`directions.py`), edits (`edits.py`), the ledger
(`aimri.ledger`; pass `run_dir` to record the monitoring there).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, final

import torch
from torch import Tensor
from transformers import StoppingCriteria

from aimri.corpus.text import TokenText
from aimri.dicts.dictionary import Dictionary
from aimri.errors import AimriError
from aimri.ledger import record_query
from aimri.model.adapter import Model, PatchFn
from aimri.steer.edits import Edit, _check_site
from aimri.steer.generate import Generation, generate

Check = Literal["generated", "all"]


@final
@dataclass(frozen=True, eq=False)
class Watch:
    """Alert when `direction`'s projection, or `dictionary`'s feature `feature`, reaches
    `threshold` at `site`. Give a direction or a dictionary and feature, not both; the
    constructors `of_direction` and `of_feature` say which."""

    name: str
    site: str
    """For a feature: the dictionary's input site (`of_feature` fills it in)."""
    threshold: float
    direction: Tensor | None = field(default=None, repr=False)
    """[d] a probe direction at `site`; score = activation · direction."""
    dictionary: Dictionary | None = field(default=None, repr=False)
    feature: int | None = None

    @classmethod
    def of_direction(cls, name: str, site: str, direction: Tensor, threshold: float) -> Watch:
        return cls(name, site, threshold, direction=direction)

    @classmethod
    def of_feature(cls, name: str, dictionary: Dictionary, feature: int, threshold: float) -> Watch:
        return cls(name, dictionary.cfg.site, threshold, dictionary=dictionary, feature=feature)

    def __post_init__(self) -> None:
        if not self.name:
            raise AimriError("a watch needs a name: it labels its alerts")
        if not math.isfinite(self.threshold):
            raise AimriError(
                f"watch '{self.name}': threshold {self.threshold} is not a finite number: give "
                "one, e.g. a value between the scores of texts with and without the concept"
            )
        if (self.direction is None) == (self.dictionary is None):
            raise AimriError(
                f"watch '{self.name}' needs a direction or a dictionary feature, not both or "
                "neither: use Watch.of_direction(...) or Watch.of_feature(...)"
            )
        if self.direction is not None:
            d = self.direction
            if d.dim() != 1 or not bool(torch.isfinite(d).all()):
                raise AimriError(
                    f"watch '{self.name}': the direction must be one finite vector [d_model]; "
                    f"got shape {tuple(d.shape)}: pass e.g. probe_direction(...)"
                )
        else:
            self._check_feature()

    def _check_feature(self) -> None:
        assert self.dictionary is not None
        cfg, f = self.dictionary.cfg, self.feature
        if f is None or not 0 <= f < cfg.d_sae:
            raise AimriError(
                f"watch '{self.name}': feature {f} does not exist: the dictionary at "
                f"'{cfg.site or '?'}' has {cfg.d_sae} features (0-{cfg.d_sae - 1}); pick an "
                "index in that range (`aimri features search` finds features by label)"
            )
        if cfg.site and self.site != cfg.site:
            raise AimriError(
                f"watch '{self.name}' is at site '{self.site}', but its dictionary reads "
                f"'{cfg.site}': use Watch.of_feature(...), which takes the dictionary's site"
            )
        if not self.site:
            raise AimriError(
                f"watch '{self.name}': the dictionary does not record which site it reads: "
                "set DictConfig.site, or pass site= to Watch"
            )

    def width(self) -> int:
        """The activation width the watch reads."""
        if self.direction is not None:
            return len(self.direction)
        assert self.dictionary is not None
        return self.dictionary.cfg.d_in


@dataclass(frozen=True)
class Alert:
    """One watch crossing its threshold at one position of one generation."""

    prompt: int
    """Index of the prompt in the call's `prompts`."""
    position: int
    """Position in the row's own tokens: the BOS is 0, the first generated token is the
    prompt's length (padding is not counted)."""
    step: int | None
    """Which generated token was read there (0 = the first); None for a prompt position."""
    token: str
    """The text of the token at `position`."""
    watch: str
    site: str
    value: float
    threshold: float
    time: str
    """UTC, ISO 8601, when the alert was raised."""


@dataclass(frozen=True)
class MonitoredGeneration:
    generations: list[Generation]
    """As `generate` returns them; a row stopped by an alert ends before the token its
    alerting step produced."""
    alerts: list[Alert]
    """In the order they were raised: by batch, step, row, position, watch."""
    tokens: int
    """New tokens generated, over all prompts."""
    seconds: float
    """Wall time of the whole call."""
    stopped: list[int]
    """Prompts whose generation an alert stopped (only with `stop_on_alert`)."""


def monitored_generate(
    model: Model,
    prompts: Sequence[str],
    watches: Sequence[Watch],
    *,
    edits: Sequence[Edit] = (),
    on_alert: Callable[[Alert], None] | None = None,
    log_path: Path | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    check: Check = "generated",
    stop_on_alert: bool = False,
    use_cache: bool = True,
    run_dir: Path | None = None,
) -> MonitoredGeneration:
    """`generate(model, prompts, edits, ...)` with `watches` scoring every position it reads.

    `on_alert` is called with each alert as it is raised (an exception from it ends the call);
    `log_path` gets one JSON line per alert (appended, flushed). `check="all"` also scores the
    prompts. `stop_on_alert` ends a row at its first alert. `run_dir`: record this monitoring
    in that run's ledger (kind "monitor")."""
    start = time.perf_counter()
    mon = _Monitor(model, watches, check, stop_on_alert, on_alert)
    if run_dir is not None:
        record_query(run_dir, "monitor", model_sha256=model.weights_sha256,
                     detail={"watches": [_describe(w) for w in watches], "prompts": len(prompts),
                             "check": check, "stop_on_alert": stop_on_alert})  # fmt: skip
    with _open_log(log_path) as log:
        mon.log = log
        gens = generate(model, prompts, [*edits, mon.recorder], max_new_tokens=max_new_tokens,
                        temperature=temperature, seed=seed, batch_size=batch_size,
                        use_cache=use_cache, stopping=mon.new_batch)  # fmt: skip
    stopped = sorted(mon.kept)
    for i in stopped:
        gens[i] = _cut(model, gens[i], mon.kept[i])
    tokens = sum(len(g.new_ids) for g in gens)
    return MonitoredGeneration(gens, mon.alerts, tokens, time.perf_counter() - start, stopped)


class _SiteScorer:
    """All watches at one site, scored together: [B, t, d] → [B, t, n] float32."""

    def __init__(self, watches: list[tuple[int, Watch]], device: torch.device) -> None:
        dirs = [(i, w) for i, w in watches if w.direction is not None]
        groups: dict[int, tuple[Dictionary, list[tuple[int, Watch]]]] = {}
        for i, w in watches:
            if w.dictionary is not None:
                groups.setdefault(id(w.dictionary), (w.dictionary, []))[1].append((i, w))
        ordered = dirs + [iw for _, ws in groups.values() for iw in ws]
        self.watch_ids = [i for i, _ in ordered]
        """Column → index of the watch in the call's list."""
        vecs = [w.direction.float() for _, w in dirs if w.direction is not None]
        self.D = torch.stack(vecs, 1).to(device) if vecs else None  # [d, n_directions]
        self.dicts = [
            (d, torch.tensor([w.feature for _, w in ws], device=d.W_enc.device))
            for d, ws in groups.values()
        ]

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [B·t, d]
        parts = [] if self.D is None else [flat.float() @ self.D]
        for d, feats in self.dicts:
            codes = d.encode(flat.to(d.W_enc.device, d.W_enc.dtype))
            parts.append(codes.to_dense(d.cfg.d_sae)[:, feats].to(x.device, torch.float32))
        return torch.cat(parts, 1).view(*x.shape[:-1], -1)


@final
class _Recorder(Edit):
    """Read-only patches: score the watched sites, keep the scores for the step's check."""

    positions = "all"

    def __init__(self, scorers: dict[str, _SiteScorer]) -> None:
        self.scorers = scorers
        self.pending: dict[str, Tensor] = {}
        """Site → [B, t, n] scores of the last forward pass."""

    def patches(self, model: Model, prompt_len: int | None = None) -> dict[str, PatchFn]:
        self.pending.clear()
        return {site: self._reader(site, s) for site, s in self.scorers.items()}

    def _reader(self, site: str, scorer: _SiteScorer) -> PatchFn:
        def read(t: Tensor) -> Tensor:
            self.pending[site] = scorer(t)
            return t

        return read


class _Monitor:
    """The watches of one call, checked against the model, and what they raised."""

    def __init__(
        self,
        model: Model,
        watches: Sequence[Watch],
        check: str,
        stop: bool,
        on_alert: Callable[[Alert], None] | None,
    ) -> None:
        _check_watches(model, watches, check)
        by_site: dict[str, list[tuple[int, Watch]]] = {}
        for i, w in enumerate(watches):
            by_site.setdefault(w.site, []).append((i, w))
        self.watches = list(watches)
        scorers = {s: _SiteScorer(ws, model.device) for s, ws in by_site.items()}
        self.recorder = _Recorder(scorers)
        self.columns = [i for s in scorers.values() for i in s.watch_ids]
        """Column of the concatenated site scores → watch index."""
        self.threshold = torch.tensor([self.watches[i].threshold for i in self.columns])
        self.check, self.stop, self.on_alert = check, stop, on_alert
        self.eos = model.tokenizer.eos_token_id
        self.text = TokenText(model.tokenizer)
        self.alerts: list[Alert] = []
        self.log: IO[str] | None = None
        self.seen = 0  # prompts in the batches so far
        self.kept: dict[int, int] = {}  # prompt → new tokens kept, for rows an alert stopped

    def new_batch(self, ids: list[list[int]]) -> list[StoppingCriteria]:
        """`generate`'s hook: the watcher of the next batch, given its prompts' ids."""
        batch = _Batch(self, self.seen, [len(i) for i in ids])
        self.seen += len(ids)
        return [batch]

    def raise_alerts(self, rows: list[tuple[int, int, int, int, int, float]]) -> None:
        """rows: (prompt, position, step or -1, token id, watch index, value), sorted."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        for prompt, pos, step, tok, wi, value in sorted(rows):
            w = self.watches[wi]
            a = Alert(prompt, pos, None if step < 0 else step, self.text([tok])[0], w.name,
                      w.site, value, w.threshold, now)  # fmt: skip
            self.alerts.append(a)
            if self.log is not None:
                self.log.write(json.dumps(asdict(a), ensure_ascii=False) + "\n")
                self.log.flush()
            if self.on_alert is not None:
                self.on_alert(a)


class _Batch(StoppingCriteria):
    """Called by `generate` after every step of one batch: scores → alerts, rows that end."""

    def __init__(self, mon: _Monitor, first: int, lengths: list[int]) -> None:
        self.mon, self.first = mon, first
        self.T = max(lengths)
        self.pad = torch.tensor([self.T - n for n in lengths])  # [B] left padding per row
        self.end = torch.full((len(lengths),), 1 << 62)  # [B] last position scored per row
        self.scored = 0  # positions before this were checked already

    def __call__(self, input_ids: Tensor, scores: Any, **kwargs: Any) -> Tensor:
        mon, L = self.mon, input_ids.shape[1]
        blocks = [mon.recorder.pending.pop(s) for s in mon.recorder.scorers]
        score = torch.cat(blocks, -1).cpu()  # [B, t, n]: the positions read this step
        pos = torch.arange(L - 1 - score.shape[1], L - 1)  # [t] padded positions
        ok = (pos >= max(self.scored, self.T if mon.check == "generated" else 0))[None, :]
        ok = ok & (pos[None, :] >= self.pad[:, None]) & (pos[None, :] <= self.end[:, None])
        hit = (score >= mon.threshold) & ok[..., None]  # [B, t, n]
        self.scored = L - 1
        b, t, c = hit.nonzero(as_tuple=True)
        ids = input_ids.cpu()[b, pos[t]].tolist() if len(b) else []
        rows = [
            (self.first + r, p - int(self.pad[r]), p - self.T if p >= self.T else -1, tok,
             mon.columns[k], v)
            for r, p, tok, k, v in zip(b.tolist(), pos[t].tolist(), ids, c.tolist(),
                                       score[b, t, c].tolist(), strict=True)
        ]  # fmt: skip
        mon.raise_alerts(rows)
        return self._finish_rows(input_ids, hit.flatten(1).any(1), L)

    def _finish_rows(self, input_ids: Tensor, alerted: Tensor, L: int) -> Tensor:
        """Mark rows that end at this step (an EOS, or an alert with stop_on_alert): their
        last token is not read, so positions from L-1 on are not scored."""
        live = self.end > L
        eos = self.mon.eos
        ending = input_ids[:, -1].cpu() == eos if eos is not None else torch.zeros_like(live)
        stop = alerted & live if self.mon.stop else torch.zeros_like(live)
        for r in stop.nonzero().flatten().tolist():
            self.mon.kept[self.first + r] = L - 1 - self.T
        self.end = torch.where(live & (ending | stop), L - 2, self.end)
        return stop.to(input_ids.device)


def _check_watches(model: Model, watches: Sequence[Watch], check: str) -> None:
    if not watches:
        raise AimriError("nothing to watch: give at least one Watch")
    if check not in ("generated", "all"):
        raise AimriError(f"check '{check}' is unknown: use 'generated' or 'all'")
    names = [w.name for w in watches]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise AimriError(f"two watches are named '{dup}': give each watch its own name")
    for w in watches:
        _check_site(model, w.site, w.width(), f"watch '{w.name}'")


def _describe(w: Watch) -> dict[str, Any]:
    kind = {"kind": "direction"} if w.direction is not None else {"feature": w.feature}
    return {"name": w.name, "site": w.site, "threshold": w.threshold, **kind}


def _cut(model: Model, g: Generation, n: int) -> Generation:
    new = g.new_ids[:n]
    return replace(g, new_ids=new, text=model.tokenizer.decode(new, skip_special_tokens=True))


@contextlib.contextmanager
def _open_log(path: Path | None) -> Iterator[IO[str] | None]:
    """The JSONL log opened for appending, or None."""
    if path is None:
        yield None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        yield f
