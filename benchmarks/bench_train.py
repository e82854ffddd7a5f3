"""Dictionary training speed and quality: aimri against sparsify and SAELens, same data, same run.

Setup (the dictionaries issue): SmolLM2-135M, a middle layer's residual stream (d = 576), TopK
k = 32, width 8 × 576, batches of 4096 tokens, float32 on CPU. Every contender sees the same
batches, held in memory, for the same number of steps, and is scored by FVU on the same
held-out batches. Contenders:
  encoder_fwd   the dense encoder forward alone: a bound on any TopK step
  plain         a plain dense PyTorch TopK step (dense encoder/decoder with autograd, Adam)
  aimri         aimri's training step (sparse kernels, aux-K, unit-norm decoder, Adam)
  sparsify      EleutherAI sparsify's SparseCoder, stepped as its Trainer steps it
  sae_lens      SAELens's TopK training SAE, stepped as its trainer steps it (if installed)
Reports wall-clock tokens/s, tokens per CPU-second, ratios, the held-out FVU after the same number
of steps (constant learning rate 2e-4/sqrt(width/2^14) for all), and how aimri's step time grows
with width. Run: `python benchmarks/bench_train.py [--store DIR] [--steps 30]`; without --store the
activations are collected first (about 3 minutes).
"""

from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import aimri
from aimri.config import OptimConfig, TrainConfig
from aimri.dicts import train as train_mod
from aimri.dicts.sparse import dense_decode

D, BATCH, K = 576, 4096, 32
Step = Callable[[torch.Tensor], None]


def activations(store_dir: Path | None, site: str, n_batches: int) -> list[torch.Tensor]:
    if store_dir is None:
        store_dir = Path(tempfile.mkdtemp()) / "acts"
        cfg = aimri.CollectConfig(
            out=store_dir,
            sites=(site,),
            corpus=aimri.CorpusConfig(max_tokens=BATCH * (n_batches + 2) * 129 // 128),
        )
        aimri.collect(cfg)
    store = aimri.ActivationStore(store_dir)
    batches = [
        b.float()
        for _, b in zip(
            range(n_batches), store.batches(site, BATCH, exclude_sinks=True), strict=False
        )
    ]
    if len(batches) < n_batches:
        raise SystemExit(
            f"store {store_dir} has only {len(batches)} batches of {BATCH}; need {n_batches}"
        )
    return batches


def timed(step: Step, batches: list[torch.Tensor]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for one pass of `step` over `batches`, after one warm-up."""
    step(batches[0])
    w, c = time.perf_counter(), time.process_time()
    for x in batches:
        step(x)
    return time.perf_counter() - w, time.process_time() - c


def fvu(encode_decode: Callable[[torch.Tensor], torch.Tensor], held: list[torch.Tensor]) -> float:
    with torch.no_grad():
        err = sum(float((encode_decode(x) - x).pow(2).sum()) for x in held)
        var = sum(float((x - x.mean(0)).pow(2).sum()) for x in held)
    return err / var


def lr_for(width: int) -> float:
    return 2e-4 / math.sqrt(width / 2**14)


def encoder_forward(width: int) -> Step:
    W, b = torch.randn(width, D) / D**0.5, torch.zeros(width)

    def step(x: torch.Tensor) -> None:
        with torch.no_grad():
            torch.addmm(b, x, W.T)

    return step


def plain(width: int) -> tuple[Step, Callable]:
    W_dec = torch.randn(width, D)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = [
        torch.nn.Parameter(W_dec.clone()),
        torch.nn.Parameter(torch.zeros(width)),
        torch.nn.Parameter(W_dec),
        torch.nn.Parameter(torch.zeros(D)),
    ]
    W_enc, b_enc, W_dec_p, b_dec = params
    opt = torch.optim.Adam(params, lr=lr_for(width))

    def forward(x: torch.Tensor) -> torch.Tensor:
        pre = (x - b_dec) @ W_enc.T + b_enc
        vals, idx = pre.topk(K, dim=-1)
        return dense_decode(idx, vals.relu(), W_dec_p) + b_dec

    def step(x: torch.Tensor) -> None:
        loss = (forward(x) - x).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec_p.div_(W_dec_p.norm(dim=-1, keepdim=True))

    return step, forward


def ours(width: int, first: torch.Tensor, tmp: Path) -> tuple[Step, Callable]:
    """aimri's real training step (`aimri.dicts.train._step`) on in-memory batches."""
    store = tmp / "s"
    cfg = TrainConfig(
        store=store,
        site="x",
        out=tmp / "o",
        expansion=width // D,
        k=K,
        # A constant learning rate, as the peers' steps here have (no warm-up or decay).
        optim=OptimConfig(batch_size=BATCH, tokens=10**9, warmup_frac=0.0, decay_frac=0.0),
    )
    dict_cfg = aimri.config.DictConfig(d_in=D, d_sae=width, k=K, site="x")
    state = train_mod._resume_or_init(cfg, dict_cfg, (first, first), steps=10**6)

    def step(x: torch.Tensor) -> None:
        xs = x * state.scale_in
        train_mod._step(state, xs, xs, cfg, steps=10**6)

    def forward(x: torch.Tensor) -> torch.Tensor:
        d = state.dictionary
        return d.decode(d.encode(x * state.scale_in)) / state.scale_in

    return step, forward


def sparsify_contender(width: int) -> tuple[Step, Callable] | None:
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        return None
    sae = SparseCoder(D, SparseCoderConfig(num_latents=width, k=K), device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=lr_for(width))
    since = torch.zeros(width, dtype=torch.long)

    def step(x: torch.Tensor) -> None:  # the per-batch body of sparsify's Trainer.fit
        out = sae(x, dead_mask=since > 10_000_000)
        loss = out.fvu + 1 / 32 * out.auxk_loss
        loss.backward()
        since.add_(len(x))
        since[out.latent_indices.flatten()] = 0
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()

    return step, lambda x: sae(x).sae_out


def sae_lens_contender(width: int) -> tuple[Step, Callable] | None:
    try:
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig  # type: ignore[import-not-found]
        from sae_lens.saes.sae import TrainStepInput  # type: ignore[import-not-found]
    except ImportError:
        return None
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=D, d_sae=width, k=K, device="cpu", dtype="float32")
    )
    opt = torch.optim.Adam(sae.parameters(), lr=lr_for(width))
    since = torch.zeros(width)

    def step(x: torch.Tensor) -> None:  # the body of SAELens's SAETrainer._train_step
        sae.train()
        out = sae.training_forward_pass(
            step_input=TrainStepInput(
                sae_in=x,
                coefficients={},
                dead_neuron_mask=since > 1000,
                n_training_steps=0,
                is_logging_step=False,
            )
        )
        with torch.no_grad():
            since.add_(1)
            since[out.feature_acts.bool().any(0)] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    def forward(x: torch.Tensor) -> torch.Tensor:
        sae.eval()
        return sae(x)

    return step, forward


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--site", default="blocks.15.hook_resid_post")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument(
        "--quality-steps", type=int, default=120, help="steps before the held-out FVU is taken"
    )
    ap.add_argument("--widths", type=int, nargs="*", default=[4, 8, 32, 128])
    args = ap.parse_args()
    torch.manual_seed(0)
    data = activations(args.store, args.site, args.steps + 4)
    train_batches, held = data[: args.steps], data[args.steps :]
    width = 8 * D
    print(f"# {platform.processor() or platform.machine()} · torch {torch.__version__} · {torch.get_num_threads()} threads · "
          f"site {args.site} · TopK k={K} · width {width} · batch {BATCH} · {args.steps} steps")  # fmt: skip
    rows: dict[str, tuple[float, float, float]] = {}
    w, c = timed(encoder_forward(width), train_batches)
    rows["encoder_fwd"] = (w, c, math.nan)
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {
            "plain": plain(width),
            "aimri": ours(width, train_batches[0], Path(tmp)),
            "sparsify": sparsify_contender(width),
            "sae_lens": sae_lens_contender(width),
        }
        for name, c_ in contenders.items():
            if c_ is None:
                print(f"{name:<12} not installed (pip install the peer to include it)")
                continue
            step, forward = c_
            w, c = timed(step, train_batches)
            for i in range(args.quality_steps - args.steps - 1):  # same extra budget for everyone
                step(train_batches[i % len(train_batches)])
            rows[name] = (w, c, fvu(forward, held))
    tokens = BATCH * args.steps
    print(
        f"# timing over {args.steps} steps; FVU on {len(held)} held-out batches after {args.quality_steps} steps"
    )
    print(f"{'':<12}{'tokens/s':>10}{'tok/CPU-s':>11}{'ms/step':>9}{'FVU':>8}")
    for name, (w, c, f) in rows.items():
        print(
            f"{name:<12}{tokens / w:>10,.0f}{tokens / c:>11,.0f}{1000 * w / args.steps:>9.0f}{f:>8.3f}"
        )
    a = rows["aimri"][0]
    for peer in ("plain", "sparsify", "sae_lens"):
        if peer in rows:
            print(
                f"aimri / {peer:<9} speed = {rows[peer][0] / a:.2f}x (wall) {rows[peer][1] / rows['aimri'][1]:.2f}x (CPU)"
            )
    print(
        f"aimri step / encoder-forward-only time = {a / rows['encoder_fwd'][0]:.2f} (target <= 1.5)"
    )
    print("# width scaling: ms per step (aimri, plain dense)")
    for mult in args.widths:
        wd = mult * D
        n = 3
        with tempfile.TemporaryDirectory() as tmp:
            wa, _ = timed(ours(wd, train_batches[0], Path(tmp))[0], train_batches[:n])
        we, _ = timed(encoder_forward(wd), train_batches[:n])
        wp, _ = timed(plain(wd)[0], train_batches[:n]) if mult <= 32 else (math.nan, 0)
        print(
            f"{mult:>4}x d ({wd:>6}): aimri {1000 * wa / n:>7.0f}  encoder-only {1000 * we / n:>7.0f}  plain {1000 * wp / n:>7.0f}"
        )


if __name__ == "__main__":
    main()
