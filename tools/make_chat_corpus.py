"""Generate the built-in chat corpus (`src/aimri/corpus/data/chat-<split>.jsonl.gz`) with the
built-in model: `python tools/make_chat_corpus.py --split train` (about 20 minutes on 2 quiet
cores). Resumable: each finished batch is appended to `<file>.partial.jsonl`, and a rerun
continues after the last one. `--finish` writes the corpus from the batches done so far (the
header records how many of the generator's batches it holds)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from aimri.corpus.chat import (
    Document,
    GenerationSettings,
    corpus_path,
    generate_documents,
    generator,
    requests_of,
    write_corpus,
)
from aimri.model.load import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--split", default="train")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--finish", action="store_true", help="write the corpus from the batches done")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model = load_model(args.model, dtype="bfloat16")
    gen = generator(args.split)
    settings = GenerationSettings(batch_size=args.batch_size)
    out = corpus_path(args.split)
    partial = Path(str(out) + ".partial.jsonl")
    done = (
        [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    )
    t = time.perf_counter()
    if not args.finish:
        with open(partial, "a") as f:
            for b, docs in generate_documents(
                model.hf, model.tokenizer, gen, settings, skip_batches=len(done)
            ):
                f.write(json.dumps({"batch": b, "docs": docs}, ensure_ascii=False) + "\n")
                f.flush()
        done = [json.loads(line) for line in partial.read_text().splitlines()]
    docs = [Document(**d) for rec in done for d in rec["docs"]]
    n_tok = sum(len(model.tokenizer(d["text"]).input_ids) for d in docs)
    n_batches = -(-len(requests_of(gen)) // settings.batch_size)
    write_corpus(out, docs, gen, settings, model.weights_sha256, batches=(len(done), n_batches))
    print(
        f"{len(docs)} documents, {n_tok} tokens, {len(done)} of {n_batches} batches, "
        f"{time.perf_counter() - t:.0f} s"
    )


if __name__ == "__main__":
    main()
