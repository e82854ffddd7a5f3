"""Feature catalog at scale: build a synthetic catalog and time its lookups.

Synthetic but shaped like `feature_statistics` output: per feature a 64-bin histogram, 3
quantiles, 10 promoted and 10 suppressed tokens, 8 neighbours, 8 co-occurring features and
`--examples` example windows of `--window` tokens (sparse activations rounded to 4 decimals, as
stats.py rounds them); two labels per feature (`tokens`, `llm:x`), each scored once. Label
texts are phrases of 3-10 words drawn Zipf-like from the ~2,800 words of the Python
documentation topics shipped in the standard library (`pydoc_data`), so common words match
thousands of labels and rare ones a few.
Prints build time, file size, and median / p95 latency of `search` (200 queries: single common
and rare words, phrases, stems, prefixes, hostile strings), `feature()` and `top_features`.
Run: `python benchmarks/bench_catalog.py [--features 100000] [--examples 20] [--window 32]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aimri.features.catalog import Catalog, RunIdentity
from aimri.features.records import (
    BasisInfo,
    Example,
    FeatureSet,
    FeatureStats,
    Label,
    Neighbour,
    Score,
    TokenEffect,
)

SITE = "blocks.15.hook_resid_post"
EXPLAINERS = ("tokens", "llm:x")
HOSTILE = ['"', "*", "NEAR(", "') OR 1=1 --", "(((", 'text: "unclosed', "AND OR NOT", "^x"]


def word_list(n: int = 4000) -> list[str]:
    """Up to n words (3-12 letters) of the stdlib's documentation topics, most frequent first."""
    import pydoc_data.topics as topics

    text = " ".join(topics.topics.values()).lower()
    counts: dict[str, int] = {}
    for w in re.findall(r"\b[a-z]{3,12}\b", text):
        counts[w] = counts.get(w, 0) + 1
    return sorted(counts, key=lambda w: -counts[w])[:n]


def phrase(rng: random.Random, words: list[str], weights: list[float]) -> str:
    return " ".join(rng.choices(words, weights, k=rng.randint(3, 10)))


def make_stats(
    i: int, rng: random.Random, words: list[str], n_features: int, n_ex: int, window: int
) -> FeatureStats:
    examples = []
    for n in range(n_ex):
        acts = [round(rng.random() * 5, 4) if rng.random() < 0.15 else 0.0 for _ in range(window)]
        tokens = [" " + rng.choice(words) for _ in range(window)]
        kind = "top" if n < n_ex // 2 else "quantile"
        examples.append(
            Example(tokens, acts, rng.randrange(10**5), rng.randrange(1, 96), kind, n % 5)
        )
    edges = [float(f"{10 ** (-4 + k * 8 / 64):.4g}") for k in range(65)]
    return FeatureStats(
        index=i,
        density=rng.random() * 0.05,
        max_act=round(rng.random() * 20, 4),
        mean_act=round(rng.random() * 3, 4),
        quantiles={"p50": 0.5, "p90": 1.8, "p99": 4.2},
        hist_edges=edges,
        hist_counts=[rng.randrange(200) for _ in range(64)],
        examples=examples,
        promoted=[TokenEffect(rng.choice(words), round(rng.random(), 4)) for _ in range(10)],
        suppressed=[TokenEffect(rng.choice(words), -round(rng.random(), 4)) for _ in range(10)],
        neighbours=[Neighbour(rng.randrange(n_features), round(rng.random(), 4)) for _ in range(8)],
        cooccurring=[
            Neighbour(rng.randrange(n_features), round(rng.random(), 4)) for _ in range(8)
        ],
    )


def build(path: Path, n: int, n_ex: int, window: int, words: list[str]) -> tuple[float, float]:
    """Build the catalog; returns the wall and CPU seconds spent inside the catalog's calls
    (not in making the synthetic records)."""
    rng = random.Random(0)
    weights = [1 / (r + 10) for r in range(len(words))]  # Zipf-like
    info = BasisInfo("sae", SITE, n, f"sae {SITE} ({n})")
    ident = RunIdentity(basis=info, dictionary="/runs/x/dicts/sae", model="smollm2-135m")
    inside = [0.0, 0.0]
    cat = Catalog.create(path, ident)
    for lo in range(0, n, 5000):
        ids = range(lo, min(n, lo + 5000))
        feats = [make_stats(i, rng, words, n, n_ex, window) for i in ids]
        labels = [Label(i, phrase(rng, words, weights), ex) for i in ids for ex in EXPLAINERS]
        scores = [Score(lb.feature, lb.explainer, "embedding", rng.random(), 0.5) for lb in labels]
        t, c = time.perf_counter(), time.process_time()
        cat.add_feature_set(FeatureSet(info, feats, 10**7, 0.02, [0.0, 1.0], [n]))
        cat.add_labels(info.name, labels)
        cat.add_scores(info.name, scores)
        inside[0] += time.perf_counter() - t
        inside[1] += time.process_time() - c
        print(f"\r  built {ids.stop:,} / {n:,} features", end="", file=sys.stderr)
    t, c = time.perf_counter(), time.process_time()
    cat.finish()
    print(file=sys.stderr)
    return inside[0] + time.perf_counter() - t, inside[1] + time.process_time() - c


def queries(words: list[str], rng: random.Random) -> dict[str, list[str]]:
    """200 queries by kind (words[0] is the most frequent word)."""
    return {
        "1 word, top 50": [rng.choice(words[:50]) for _ in range(50)],
        "1 word, rarest 1000": [rng.choice(words[-1000:]) for _ in range(50)],
        "2 words, top 500": [" ".join(rng.sample(words[:500], 2)) for _ in range(40)],
        "3 words, any": [" ".join(rng.sample(words, 3)) for _ in range(20)],
        "stem (word+s)": [rng.choice(words[:300]) + "s" for _ in range(15)],
        "prefix (4 chars*)": [rng.choice(words)[:4] + "*" for _ in range(17)],
        "hostile": HOSTILE,
    }


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Median and p95 of wall-clock ms, then of CPU ms (the machine may be shared)."""
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    out = []
    for times in (sorted(wall), sorted(cpu)):
        out += [statistics.median(times), times[int(0.95 * (len(times) - 1))]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--features", type=int, default=100_000)
    ap.add_argument("--examples", type=int, default=20)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="keep the catalog here")
    args = ap.parse_args()
    words = word_list()
    with tempfile.TemporaryDirectory() as d:
        path = args.out or Path(d) / "catalog.sqlite"
        t = time.perf_counter()
        write_s, write_cpu = build(path, args.features, args.examples, args.window, words)
        build_s = time.perf_counter() - t
        size = path.stat().st_size
        cat = Catalog.open(path)
        name = cat.identity.basis.name
        rng = random.Random(1)
        kinds = queries(words, rng)
        qs = [q for group in kinds.values() for q in group]
        it = iter(qs)
        search_t = timed(lambda: cat.search(next(it), 20), len(qs))
        by_kind = {}
        for kind, group in kinds.items():
            each = iter(group)
            by_kind[f"  {kind}"] = timed(lambda g=each: cat.search(next(g), 20), len(group))
        hits = [len(cat.search(q, 20)) for q in qs]
        feat_t = timed(lambda: cat.feature(name, rng.randrange(args.features)), 1000)
        score_t = timed(lambda: cat.top_features(name, by="score", limit=20), 100)
        dens_t = timed(lambda: cat.top_features(name, by="density", limit=20), 100)
    print(f"# {platform.machine()} · {platform.python_version()} · sqlite {cat_version()}")
    print(
        f"# {args.features:,} features x {args.examples} examples of {args.window} tokens, "
        f"2 labels + 2 scores per feature, {len(words):,}-word vocabulary"
    )
    print(f"build, all       {build_s:8.1f} s   (with making the synthetic records)")
    print(
        f"build, catalog   {write_s:8.1f} s   ({args.features / write_s:,.0f} features/s), CPU {write_cpu:.1f} s"
    )
    print(f"load average     {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"file size        {size / 2**20:8.1f} MiB ({size / args.features / 1024:.1f} KiB/feature)"
    )
    print(f"{'':21} {'median ms':>9} {'p95 ms':>9} {'CPU med':>9} {'CPU p95':>9}")
    for what, t in {
        f"search ({len(qs)} q)": search_t,
        **by_kind,
        "feature()": feat_t,
        "top_features score": score_t,
        "top_features dens.": dens_t,
    }.items():
        print(f"{what:<21} " + " ".join(f"{x:9.2f}" for x in t))
    print(f"search hits per query: median {statistics.median(hits):.0f}, zero for {hits.count(0)}")


def cat_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


if __name__ == "__main__":
    main()
