"""`aimri export neuronpedia --upload`: send an export to Neuronpedia with its own client.

The `neuronpedia` package (pip install 'aimri[export]') does the talking: graphs through
`GraphRequest.upload` (a signed PUT of the gzipped JSON, then saved), the dictionary through
`SourceSetRequest.get`, or `.new` where it is not there yet (one source per layer; the model
is created first with `ModelRequest.new` where Neuronpedia does not have it) and the described features through
`FeatureRequest.upload_batch`, built from the client's own types (`Feature`, `Activation`,
`Explanation`, `Logit`). The API key is read from NEURONPEDIA_API_KEY and handed to the client;
it is never written to a file, a log or an error message. The client prints progress; that is
turned into debug log lines (the library logs, the CLI prints).
Not here: what the export holds (`neuronpedia.py`, `formats.py`).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from aimri.errors import AimriError
from aimri.export.neuronpedia import BATCH, ExportResult

log = logging.getLogger(__name__)
KEY_ENV = "NEURONPEDIA_API_KEY"
T = TypeVar("T")


@dataclass(frozen=True)
class UploadResult:
    graphs: list[str]
    """Where Neuronpedia shows each uploaded graph."""
    source_id: str
    n_features: int


def api_key() -> str:
    """The key from the environment; refused before any work when it is missing."""
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise AimriError(
            f"--upload needs a Neuronpedia API key in the environment variable {KEY_ENV}: "
            "nothing was sent; create one at neuronpedia.org (account page), then `export "
            f"{KEY_ENV}=...` and run the same command again"
        )
    return key


def check_client() -> None:
    """Refuse --upload at once when the `neuronpedia` client is not installed."""
    try:
        import neuronpedia  # noqa: F401
    except ImportError as e:
        raise AimriError(
            "--upload needs the `neuronpedia` client, which is not installed: nothing was sent; "
            "pip install 'aimri[export]' (or pip install neuronpedia) and run it again"
        ) from e


def upload(result: ExportResult, *, url: str) -> UploadResult:
    """Send the export's graphs and its dictionary's described features to Neuronpedia at
    `url` (the API root)."""
    key = api_key()  # first: importing the client loads a .env file into the environment
    check_client()
    from neuronpedia.requests.graph_request import GraphRequest

    shown = []
    for slug in result.graphs:
        text = (result.graphs_dir / f"{slug}.json").read_text()
        meta = _call(
            url, f"graph '{slug}'", lambda t=text: _at(GraphRequest(api_key=key), url).upload(t)
        )
        # the client builds its link from the public site; the graph is where it was sent
        site = url.rstrip("/").removesuffix("/api")
        shown.append(f"{site}/{meta.model_id}/graph?slug={meta.slug}")
        log.info("uploaded graph %s", slug)
    head = _record(result, "source")
    source_set = _call(
        url, f"source set '{head['setName']}'", lambda: _source_set(key, url, result, head)
    )
    if not any(s.id == result.source_id for s in source_set.sources):
        log.warning("Neuronpedia lists no source %s in its answer; uploading to it anyway",
                    result.source_id)  # fmt: skip
    n = 0
    for batch in _feature_batches(result):
        _call(
            url,
            f"features of {result.source_id}",
            lambda b=batch: _upload_batch(key, url, result, b),
        )
        n += len(batch)
    log.info("uploaded %d features to source %s", n, result.source_id)
    return UploadResult(shown, result.source_id, n)


def _source_set(key: str, url: str, result: ExportResult, head: dict[str, Any]) -> Any:
    """The dictionary's source set on Neuronpedia: the one there (a second upload), else a new
    one, after creating the model (unlisted, as Neuronpedia makes them) where it is missing."""
    import requests
    from neuronpedia.requests.model_request import ModelRequest
    from neuronpedia.requests.source_set_request import SourceSetRequest

    request = _at(SourceSetRequest(api_key=key), url)
    try:
        return request.get(result.model_id, head["setName"])
    except requests.exceptions.HTTPError as e:
        if "not found" not in str(e).lower():
            raise
    name, description = head["setName"], _record(result, "sourceset")["description"][:128]
    try:
        return request.new(name=name, model_id=result.model_id, description=description)
    except requests.exceptions.HTTPError as e:
        if "model not found" not in str(e).lower():
            raise
    layers = int(_record(result, "model")["layers"])
    _at(ModelRequest(api_key=key), url).new(id=result.model_id, layers=layers)
    log.info("created model %s (%d layers) on Neuronpedia", result.model_id, layers)
    return request.new(name=name, model_id=result.model_id, description=description)


def _at(request: T, url: str) -> T:
    """The client's request object aimed at `url` (its class default is the public site)."""
    request.BASE_URL = url.rstrip("/")  # type: ignore[attr-defined]
    return request


def _call(url: str, what: str, send: Callable[[], T]) -> T:
    """Run one client call with its prints logged; its failures as one AimriError line."""
    import requests

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return send()
    except requests.exceptions.ConnectionError as e:
        raise AimriError(
            f"uploading {what}: Neuronpedia at {url} cannot be reached ({type(e).__name__}); "
            "check --upload-url and the network, then run the same command again"
        ) from None
    except (requests.exceptions.RequestException, ValueError, KeyError) as e:
        raise AimriError(
            f"uploading {what} to {url} failed: {_first_line(e)}; fix what it names and run the "
            "same command again (graphs already uploaded are replaced by the same slug)"
        ) from None
    except Exception as e:  # the client's own errors: missing or refused key, rate limit
        if type(e).__module__.startswith("neuronpedia"):
            raise AimriError(
                f"uploading {what} to {url}: {type(e).__name__}: {_first_line(e)}; check "
                f"{KEY_ENV} and your access to that model, then run it again"
            ) from None
        raise
    finally:
        for line in out.getvalue().splitlines():
            log.debug("neuronpedia: %s", line)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _record(result: ExportResult, name: str) -> dict[str, Any]:
    """The one record of the export's `model.jsonl`, `sourceset.jsonl` or `source.jsonl`."""
    return json.loads((result.source_dir / f"{name}.jsonl").read_text().splitlines()[0])


def _jsonl(path: Any) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


MAX_LOGITS, MAX_LABEL, MAX_TOKENS = 20, 512, 1024
"""What Neuronpedia's upload-batch route accepts: at most 20 top and bottom logits, labels of
1-512 characters, texts of at most 1,024 tokens, and at least one text per feature."""


def _feature_batches(result: ExportResult) -> Iterator[list[Any]]:
    """The described features as the client's `Feature`s, `BATCH` at a time, within what
    Neuronpedia accepts: a feature with no firing text is left out (logged), longer lists and
    labels are cut."""
    root = result.source_dir
    for path in sorted((root / "features").glob("batch-*.jsonl.gz"), key=_batch_number):
        acts: dict[str, list[dict[str, Any]]] = {}
        for a in _jsonl(root / "activations" / path.name):
            acts.setdefault(a["index"], []).append(a)
        labels: dict[str, list[dict[str, Any]]] = {}
        for x in _jsonl(root / "explanations" / path.name):
            labels.setdefault(x["index"], []).append(x)
        batch, silent = [], []
        for f in _jsonl(path):
            i = f["index"]
            if not acts.get(i):
                silent.append(i)
                continue
            batch.append(_feature(result, f, acts[i], labels.get(i, [])))
        if silent:
            log.warning("not uploaded: %d feature(s) with no firing text (%s)", len(silent),
                        ", ".join(silent[:8]))  # fmt: skip
        for b in range(0, len(batch), BATCH):
            yield batch[b : b + BATCH]


def _feature(
    result: ExportResult, f: dict[str, Any], acts: list[dict[str, Any]], labels: list[dict]
) -> Any:
    from neuronpedia.np_activation import Activation
    from neuronpedia.np_explanation import Explanation
    from neuronpedia.np_feature import Feature, Logit

    i, ids = int(f["index"]), {"modelId": result.model_id, "source": result.source_id}
    up = zip(f["pos_str"], f["pos_values"], strict=True)
    down = zip(f["neg_str"], f["neg_values"], strict=True)
    return Feature(
        **ids,
        index=i,
        density=f["frac_nonzero"],
        top_logits=[Logit(t, v) for t, v in list(up)[:MAX_LOGITS]],
        bottom_logits=[Logit(t, v) for t, v in list(down)[:MAX_LOGITS]],
        explanations=[
            Explanation(**ids, index=i, text=x["description"][:MAX_LABEL])
            for x in labels
            if x["description"]
        ],
        activations=[
            Activation(**ids, index=i, tokens=a["tokens"][:MAX_TOKENS],
                       values=a["values"][:MAX_TOKENS], quantileMax=a["binMax"],
                       quantileMin=a["binMin"], quantileFraction=a["binContains"])
            for a in acts
        ],
    )  # fmt: skip


def _batch_number(path: Any) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def _upload_batch(key: str, url: str, result: ExportResult, batch: list[Any]) -> Any:
    from neuronpedia.requests.feature_request import FeatureRequest

    return _at(FeatureRequest(api_key=key), url).upload_batch(
        result.model_id, result.source_id, batch
    )
