"""The feature catalog: one SQLite file per run holding every analysed feature's statistics,
examples, labels and scores, with full-text search (FTS5) over the labels.

Several bases live in one catalog (the dictionary and its baselines, all at the run's layer:
the MLP neurons read the MLP's input, the others the run's site), keyed by name. Integer columns `basis` refer to `bases.id`; JSON columns hold lists
and dicts exactly as the records have them, so `FeatureSet → catalog → FeatureStats` is lossless.

Safety: `Catalog.create` builds in a temporary file beside the target and renames it into place
only when the build finishes (`finish()`, or leaving its `with` block without an error); the same
last transaction sets meta `complete`, and `Catalog.open` refuses a file without it. An
interrupted build thus leaves the previous catalog or none, never a half one. A catalog opened
with `writable=True` takes later additions in place, one transaction per call. Search text from
users is reduced to quoted words, so FTS5 syntax in a query is matched literally, never parsed.
Non-goals: computing anything (stats, labels and scores come from `stats.py`, `explain.py`,
`score.py`), HTML escaping (the report's job: text is stored byte for byte), concurrent writers.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, final

from aimri._io import atomic_path, read_json, sha256_file
from aimri.config import ExplainTextConfig, SearchConfig
from aimri.errors import AimriError
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
from aimri.ledger import record_query
from aimri.model.sites import parse_site

if TYPE_CHECKING:
    from aimri.features.basis import FeatureBasis
    from aimri.model.adapter import Model

CATALOG_SCHEMA = 1
FORMAT = "aimri-catalog"
MAX_TERMS = 32  # words of a search query that are used
_APPLICATION_ID = 0x61694D52  # "aiMR" in the SQLite header, so `file` can tell what it is
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE bases (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
  site TEXT NOT NULL, n_features INTEGER NOT NULL, n_tokens INTEGER, dead_fraction REAL,
  density_hist TEXT);
CREATE TABLE features (basis INTEGER NOT NULL, idx INTEGER NOT NULL, density REAL NOT NULL,
  max_act REAL NOT NULL, mean_act REAL NOT NULL, quantiles TEXT NOT NULL, histogram TEXT NOT NULL,
  promoted TEXT NOT NULL, suppressed TEXT NOT NULL, neighbours TEXT NOT NULL,
  cooccurring TEXT NOT NULL, PRIMARY KEY (basis, idx));
CREATE INDEX features_density ON features (basis, density DESC);
CREATE INDEX features_max_act ON features (basis, max_act DESC);
CREATE TABLE examples (basis INTEGER NOT NULL, feature INTEGER NOT NULL, ord INTEGER NOT NULL,
  kind TEXT NOT NULL, bucket INTEGER NOT NULL, context INTEGER NOT NULL, start INTEGER NOT NULL,
  tokens TEXT NOT NULL, acts TEXT NOT NULL, PRIMARY KEY (basis, feature, ord));
CREATE TABLE labels (id INTEGER PRIMARY KEY, basis INTEGER NOT NULL, feature INTEGER NOT NULL,
  explainer TEXT NOT NULL, text TEXT NOT NULL, meta TEXT NOT NULL,
  UNIQUE (basis, feature, explainer));
CREATE VIRTUAL TABLE labels_fts USING fts5(text, content='labels', content_rowid='id',
  tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER labels_ai AFTER INSERT ON labels BEGIN
  INSERT INTO labels_fts (rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER labels_ad AFTER DELETE ON labels BEGIN
  INSERT INTO labels_fts (labels_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
CREATE TRIGGER labels_au AFTER UPDATE OF text ON labels BEGIN
  INSERT INTO labels_fts (labels_fts, rowid, text) VALUES ('delete', old.id, old.text);
  INSERT INTO labels_fts (rowid, text) VALUES (new.id, new.text); END;
CREATE TABLE scores (basis INTEGER NOT NULL, feature INTEGER NOT NULL, explainer TEXT NOT NULL,
  scorer TEXT NOT NULL, value REAL, baseline REAL, metrics TEXT NOT NULL,
  PRIMARY KEY (basis, feature, explainer, scorer));
CREATE INDEX scores_value ON scores (basis, value DESC);
CREATE TABLE summary (basis INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (basis, key));
"""
_WORD = re.compile(r"(\w+)(\*?)")
_STOP = frozenset(re.findall(r"\w+", "a an and are as at be by for from in is it of on or the to"))
_EXAMPLES = """SELECT tokens, acts, context, start, kind, bucket FROM examples
  WHERE basis = ? AND feature = ? ORDER BY ord"""
_ADD_BASIS = "INSERT INTO bases (name, kind, site, n_features) VALUES (?, ?, ?, ?)"
_SEARCH = """WITH hits AS (SELECT l.id, labels_fts.rank AS rank FROM labels_fts
  JOIN labels l ON l.id = labels_fts.rowid WHERE labels_fts MATCH ? {where}
  ORDER BY labels_fts.rank LIMIT ?)
SELECT b.name, l.feature, l.explainer, l.text, (SELECT max(+s.value) FROM scores s
  WHERE s.basis = l.basis AND s.feature = l.feature AND s.explainer = l.explainer), hits.rank
FROM hits JOIN labels l ON l.id = hits.id JOIN bases b ON b.id = l.basis ORDER BY hits.rank"""
_TOP_SCORES = (
    "SELECT feature, value FROM scores WHERE basis = ? AND value IS NOT NULL ORDER BY value DESC"
)
_BEST_LABEL = """SELECT l.text, max(s.value) AS best FROM labels l LEFT JOIN scores s
  ON s.basis = l.basis AND s.feature = l.feature AND s.explainer = l.explainer
  WHERE l.basis = ? AND l.feature = ? GROUP BY l.id ORDER BY best IS NULL, best DESC, l.id
  LIMIT 1"""


@dataclass(frozen=True, kw_only=True)
class RunIdentity:
    """Which run a catalog describes: the dictionary it was made from and the model it reads."""

    basis: BasisInfo
    """The dictionary's basis; every basis of the catalog (baselines too) is at its layer."""
    dictionary: str
    """Folder of the dictionary, so `explain-text` needs only the catalog and the model. In a
    catalog: relative to the catalog's folder, so a run folder moved or copied with its
    dictionary inside still finds it (see `Catalog.dictionary_folder`)."""
    dictionary_at: str | None = None
    """In a catalog: the dictionary's absolute path when the catalog was built, tried when the
    relative one is gone (the catalog moved, the dictionary stayed). None in older catalogs."""
    dictionary_sha256: str | None = None
    model: str
    """The model's spec, as given to `load_model`."""
    model_sha256: str | None = None
    """`Model.weights_sha256`; None when unknown (then the model is not checked)."""


@dataclass(frozen=True)
class SearchHit:
    basis: str
    feature: int
    explainer: str
    text: str
    score: float | None
    """Best score of this label over the scorers; None when it was not scored."""
    rank: float
    """FTS5 bm25 rank: more negative is a better match; hits come best first."""


@dataclass(frozen=True)
class RankedFeature:
    basis: str
    feature: int
    value: float
    """What the ranking was by: the best score, the density or the maximum activation."""
    label: str | None
    """The feature's best-scoring label (or any label when none is scored)."""


@dataclass(frozen=True)
class TokenFeature:
    feature: int
    activation: float
    label: str | None


@dataclass(frozen=True)
class TextExplanation:
    """Which features fire on each token of a text (BOS excluded), strongest first."""

    basis: str
    tokens: list[str]
    features: list[list[TokenFeature]]
    """Per token, up to `top` features with a positive activation, by activation descending."""


def dictionary_sha256(folder: Path) -> str | None:
    """The weights' sha256 recorded in the dictionary's aimri.json, else hashed, else None."""
    record, weights = folder / "aimri.json", folder / "sae_weights.safetensors"
    if record.is_file():
        raw = read_json(record, "dictionary record")
        sha = raw.get("weights_sha256") if isinstance(raw, dict) else None
        if sha:
            return str(sha)
    return sha256_file(weights) if weights.is_file() else None


def run_identity(
    dictionary: Path, basis: FeatureBasis, model: Model, *, catalog: Path
) -> RunIdentity:
    """The identity of a run made from the dictionary folder `dictionary` and `model`, for the
    catalog at `catalog`: the dictionary is named relative to the catalog's folder (the run moves
    whole), with its absolute path beside it as a fallback."""
    absolute = Path(dictionary).resolve()
    try:
        relative = os.path.relpath(absolute, Path(catalog).resolve().parent)
    except ValueError:  # another drive (Windows): no relative path exists
        relative = str(absolute)
    return RunIdentity(
        basis=basis.info,
        dictionary=relative,
        dictionary_at=str(absolute),
        dictionary_sha256=dictionary_sha256(absolute),
        model=model.info.spec,
        model_sha256=model.weights_sha256,
    )


def _j(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _num(x: float | None) -> float:
    return float("nan") if x is None else x  # SQLite stores NaN as NULL


def fts_query(text: str, op: Literal["AND", "OR"] = "AND") -> str:
    """User text → an FTS5 query of quoted words (a trailing `*` keeps prefix search). Quotes,
    parentheses, NEAR, AND, column filters… become plain words or vanish; never syntax. Stop
    words are left out when other words remain ("the" would match most labels)."""
    words: list[tuple[str, str]] = _WORD.findall(text)[:MAX_TERMS]
    content = [(w, star) for w, star in words if star or w.lower() not in _STOP]
    return f" {op} ".join(f'"{w}"' + star for w, star in content or words)


@final
class Catalog:
    """An open catalog. Build one with `create` (in a `with` block), read one with `open`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, build: ExitStack | None) -> None:
        self._conn, self._build = conn, build
        self.path = path
        """The catalog's path (while building, the file only appears there at `finish`)."""
        raw = json.loads(self._q("SELECT value FROM meta WHERE key = 'identity'").fetchone()[0])
        self.identity = RunIdentity(**{**raw, "basis": BasisInfo(**raw["basis"])})

    def _q(self, sql: str, *args: Any) -> sqlite3.Cursor:
        return self._conn.execute(sql, args)

    @classmethod
    def create(cls, path: Path, identity: RunIdentity) -> Catalog:
        """Start building a new catalog at `path` (replacing any there once finished)."""
        stack = ExitStack()
        conn = sqlite3.connect(stack.enter_context(atomic_path(Path(path))))
        # A temporary file, thrown away on any failure: it needs no durable journal.
        conn.executescript(
            f"PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF; PRAGMA application_id="
            f"{_APPLICATION_ID}; PRAGMA user_version={CATALOG_SCHEMA};{_SCHEMA}"
        )
        created = datetime.now(UTC).isoformat(timespec="seconds")
        meta = {"format": FORMAT, "schema_version": CATALOG_SCHEMA, "complete": False}
        meta |= {"created": created, "identity": asdict(identity)}
        b = identity.basis
        with conn:
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)", [(k, _j(v)) for k, v in meta.items()]
            )
            conn.execute(_ADD_BASIS, (b.name, b.kind, b.site, b.n_features))
        return cls(conn, Path(path), stack)

    @classmethod
    def open(cls, path: Path, *, writable: bool = False) -> Catalog:
        """Open a finished catalog; refuse other files, newer schemas and unfinished builds."""
        path = Path(path)
        if not path.is_file():
            raise AimriError(f"catalog '{path}' not found: build it with `aimri features`")
        conn = sqlite3.connect(path.resolve().as_uri() + ("" if writable else "?mode=ro"), uri=True)
        try:
            meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            fmt, version, complete = meta["format"], meta["schema_version"], meta["complete"]
        except (sqlite3.DatabaseError, KeyError, ValueError) as e:
            conn.close()
            raise AimriError(
                f"'{path}' is not an aimri catalog ({e}): point at the catalog.sqlite that "
                "`aimri features` wrote"
            ) from e
        problem = None
        if fmt != FORMAT:
            problem = f"it is a '{fmt}' file, not an aimri catalog"
        elif version > CATALOG_SCHEMA:
            problem = f"its schema version {version} is newer than this aimri reads "
            problem += f"({CATALOG_SCHEMA}); upgrade aimri"
        elif not complete:
            problem = "its build was interrupted before it finished; build it again"
        if problem:
            conn.close()
            raise AimriError(f"catalog '{path}' cannot be opened: {problem}")
        return cls(conn, path, None)

    def dictionary_folder(self) -> Path:
        """The dictionary folder this catalog was built from: relative to the catalog's folder
        first, then where it was when the catalog was built; refuses when neither is a folder."""
        recorded = Path(self.identity.dictionary)
        tried = [recorded if recorded.is_absolute() else self.path.resolve().parent / recorded]
        if self.identity.dictionary_at:
            tried.append(Path(self.identity.dictionary_at))
        for folder in tried:
            if folder.is_dir():
                return folder
        raise AimriError(
            f"the dictionary of catalog '{self.path}' is gone from "
            f"{' and '.join(repr(str(p)) for p in tried)}: put it back there (a run folder moves "
            "whole, with its dictionary), or rebuild the catalog with the dictionary's new path"
        )

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None and self._build is not None:
            self.finish()
        else:
            self._close(exc)

    def finish(self) -> None:
        """Compact the search index, mark the build complete (its last transaction), and move
        the file into place. On any failure the build is thrown away."""
        assert self._build is not None, "finish() is for catalogs made with Catalog.create"
        try:
            with self._tx():
                self._q("INSERT INTO labels_fts (labels_fts) VALUES ('optimize')")
                self._q("PRAGMA optimize")
            with self._tx():
                self._q("UPDATE meta SET value = 'true' WHERE key = 'complete'")
            file = self._q("PRAGMA database_list").fetchone()[2]
            self._conn.close()
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        except BaseException as e:
            self._close(e)
            raise
        build, self._build = self._build, None
        build.close()  # atomic rename onto self.path

    def close(self) -> None:
        """Close; an unfinished build is thrown away."""
        self._close(None)

    def _close(self, exc: BaseException | None) -> None:
        self._conn.close()
        if self._build is not None:
            build, self._build = self._build, None
            exc = exc or RuntimeError("the catalog build was closed before it finished")
            build.__exit__(type(exc), exc, exc.__traceback__)  # deletes the temporary file

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it is committed, or none of it."""
        try:
            with self._conn:
                yield self._conn
        except sqlite3.OperationalError as e:
            if "full" not in str(e) and "readonly" not in str(e):
                raise
            raise AimriError(
                f"cannot write to catalog '{self.path}' ({e}): free disk space, or open it "
                "with writable=True; nothing of this write was kept"
            ) from e

    def bases(self) -> list[BasisInfo]:
        return [BasisInfo(*r) for r in self._q("SELECT kind, site, n_features, name FROM bases")]

    def _basis(self, name: str, *indices: int) -> int:
        """The basis's row id; refuses an unknown basis or a feature index out of its range."""
        row = self._q("SELECT id, n_features FROM bases WHERE name = ?", name).fetchone()
        if row is None:
            known = ", ".join(f"'{b.name}'" for b in self.bases())
            raise AimriError(f"basis '{name}' is not in catalog '{self.path}': it has {known}")
        bad = [i for i in indices if not 0 <= i < row[1]]
        if bad:
            raise AimriError(
                f"feature index {bad[0]} is out of range: {name} has features 0-{row[1] - 1}"
            )
        return row[0]

    def check_fits(self, basis: FeatureBasis, model: Model | None = None) -> None:
        """Refuse a dictionary or model of another run, saying which differs."""
        ours, theirs = self.identity.basis, basis.info
        for what in ("site", "kind", "n_features"):
            a, b = getattr(ours, what), getattr(theirs, what)
            if a != b:
                raise AimriError(self._foreign(f"its {what} is {a!r}, the given basis's {b!r}"))
        want = self.identity.model_sha256
        if model is not None and want and model.weights_sha256 != want:
            raise AimriError(self._foreign(f"model '{model.info.spec}' has other weights"))

    def _foreign(self, why: str) -> str:
        return (
            f"catalog '{self.path}' belongs to another run ({why}): use the dictionary "
            f"'{self.identity.dictionary}' and model '{self.identity.model}' it was built from"
        )

    def add_feature_set(self, fs: FeatureSet) -> None:
        """Add (or replace) a basis's statistics and examples, in one transaction."""
        info, run = fs.basis, self.identity.basis
        known = {b.name: b for b in self.bases()}
        same_layer = parse_site(info.site).layer == parse_site(run.site).layer
        if not same_layer or known.get(info.name, info) != info:
            raise AimriError(
                f"{info} does not fit catalog '{self.path}': its bases are at the layer of site "
                f"'{run.site}' and it already holds {list(known.values())}"
            )
        with self._tx() as c:
            c.execute(
                _ADD_BASIS + " ON CONFLICT (name) DO NOTHING",
                (info.name, info.kind, info.site, info.n_features),
            )
            b = self._basis(info.name, *(f.index for f in fs.features))
            hist = _j([fs.density_hist_edges, fs.density_hist_counts])
            c.execute(
                "UPDATE bases SET n_tokens = ?, dead_fraction = ?, density_hist = ? WHERE id = ?",
                (fs.n_tokens, fs.dead_fraction, hist, b),
            )
            if c.execute("SELECT 1 FROM features WHERE basis = ?", (b,)).fetchone():
                rows = [(b, f.index) for f in fs.features]
                c.executemany("DELETE FROM examples WHERE basis = ? AND feature = ?", rows)
            c.executemany(
                f"INSERT OR REPLACE INTO features VALUES ({', '.join('?' * 11)})",
                (_feature_row(b, f) for f in fs.features),
            )
            c.executemany(
                f"INSERT INTO examples VALUES ({', '.join('?' * 9)})",
                (
                    (b, f.index, n, e.kind, e.bucket, e.context, e.start, _j(e.tokens), _j(e.acts))
                    for f in fs.features
                    for n, e in enumerate(f.examples)
                ),
            )

    def add_labels(self, basis: str, labels: Iterable[Label]) -> None:
        """Add labels (one per feature and explainer: a new one replaces the old)."""
        labels = list(labels)
        b = self._basis(basis, *(lb.feature for lb in labels))
        with self._tx() as c:
            c.executemany(
                "INSERT INTO labels (basis, feature, explainer, text, meta) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET text = excluded.text, meta = excluded.meta",
                [(b, lb.feature, lb.explainer, lb.text, _j(lb.meta)) for lb in labels],
            )

    def add_scores(self, basis: str, scores: Iterable[Score]) -> None:
        scores = list(scores)
        b = self._basis(basis, *(s.feature for s in scores))
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(b, s.feature, s.explainer, s.scorer, s.value, s.baseline, _j(s.metrics))
                 for s in scores],
            )  # fmt: skip

    def add_summary(self, basis: str, key: str, value: Any) -> None:
        """Store a JSON-able summary of a basis (mean scores, dead fraction …) under `key`."""
        b = self._basis(basis)
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO summary VALUES (?, ?, ?)", (b, key, _j(value)))

    def summary(self, basis: str) -> dict[str, Any]:
        rows = self._q("SELECT key, value FROM summary WHERE basis = ?", self._basis(basis))
        return {k: json.loads(v) for k, v in rows}

    def feature(self, basis: str, idx: int) -> FeatureStats:
        b = self._basis(basis, idx)
        row = self._q("SELECT * FROM features WHERE basis = ? AND idx = ?", b, idx).fetchone()
        if row is None:
            raise AimriError(
                f"feature {idx} of {basis} has no statistics in catalog '{self.path}': only "
                "some features were analysed; raise --n-features to include it"
            )
        rows = self._q(_EXAMPLES, b, idx)
        return _stats_from_row(
            row, [Example(json.loads(t), json.loads(a), *r) for t, a, *r in rows]
        )

    def described(self, basis: str) -> list[int]:
        """The indices of every feature of `basis` the catalog holds statistics for."""
        rows = self._q("SELECT idx FROM features WHERE basis = ? ORDER BY idx", self._basis(basis))
        return [i for (i,) in rows]

    def labels(self, basis: str, idx: int) -> list[Label]:
        rows = self._q(
            "SELECT explainer, text, meta FROM labels WHERE basis = ? AND feature = ? ORDER BY id",
            self._basis(basis, idx),
            idx,
        )
        return [Label(idx, text, ex, json.loads(meta)) for ex, text, meta in rows]

    def scores(self, basis: str, idx: int) -> list[Score]:
        rows = self._q(
            "SELECT explainer, scorer, value, baseline, metrics FROM scores "
            "WHERE basis = ? AND feature = ? ORDER BY explainer, scorer",
            self._basis(basis, idx),
            idx,
        )
        return [Score(idx, e, s, _num(v), _num(bl), json.loads(m)) for e, s, v, bl, m in rows]

    def best_label(self, basis: str, idx: int) -> str | None:
        """The text of the feature's best-scoring label (any label if none is scored)."""
        row = self._q(_BEST_LABEL, self._basis(basis), idx).fetchone()
        return None if row is None else row[0]

    def search(self, query: str, limit: int = 20, *, basis: str | None = None) -> list[SearchHit]:
        """Labels matching every word of `query` (stemmed: "counting" finds "counts"), best
        match first; then, to fill `limit`, labels matching some of the words."""
        hits = self._match(fts_query(query, "AND"), limit, basis)
        if len(hits) < limit and len(_WORD.findall(query)) > 1:
            seen = {(h.basis, h.feature, h.explainer) for h in hits}
            more = self._match(fts_query(query, "OR"), limit + len(hits), basis)
            hits += [h for h in more if (h.basis, h.feature, h.explainer) not in seen]
        return hits[:limit]

    def _match(self, fts: str, limit: int, basis: str | None) -> list[SearchHit]:
        if not fts or limit <= 0:
            return []
        where, args = ("AND l.basis = ?", [self._basis(basis)]) if basis else ("", [])
        rows = self._q(_SEARCH.format(where=where), fts, *args, limit)
        return [SearchHit(*r) for r in rows]

    def top_features(
        self,
        basis: str,
        *,
        by: Literal["score", "density", "max_act"] = "score",
        limit: int = 20,
    ) -> list[RankedFeature]:
        """The features with the best score (any scorer), the highest density or the highest
        maximum activation, each with its best label."""
        b = self._basis(basis)
        if by == "score":
            best: dict[int, float] = {}
            for f, v in self._q(_TOP_SCORES, b):
                best.setdefault(f, v)  # walks the (basis, value) index and stops early
                if len(best) == limit:
                    break
            pairs = list(best.items())
        elif by in ("density", "max_act"):
            sql = f"SELECT idx, {by} FROM features WHERE basis = ? ORDER BY {by} DESC LIMIT ?"
            pairs = self._q(sql, b, limit).fetchall()
        else:
            raise AimriError(f"cannot rank features by '{by}': use score, density or max_act")
        return [RankedFeature(basis, f, v, self.best_label(basis, f)) for f, v in pairs]


def _feature_row(b: int, f: FeatureStats) -> tuple[Any, ...]:
    effects = [[[t.token, t.value] for t in ts] for ts in (f.promoted, f.suppressed)]
    near = [[[n.feature, n.value] for n in ns] for ns in (f.neighbours, f.cooccurring)]
    hist = [f.hist_edges, f.hist_counts]
    json_columns = map(_j, [f.quantiles, hist, *effects, *near])
    return (b, f.index, f.density, f.max_act, f.mean_act, *json_columns)


def _stats_from_row(row: tuple[Any, ...], examples: list[Example]) -> FeatureStats:
    _, idx, density, max_act, mean_act, quantiles, hist, *effects, near, cooc = row
    (edges, counts), quantiles = json.loads(hist), json.loads(quantiles)
    up, down = ([TokenEffect(t, v) for t, v in json.loads(e)] for e in effects)
    near, cooc = ([Neighbour(f, v) for f, v in json.loads(n)] for n in (near, cooc))
    return FeatureStats(idx, density, max_act, mean_act, quantiles, edges, counts, examples, up,
                        down, near, cooc)  # fmt: skip


def explain_text(
    catalog: Catalog, model: Model, basis: FeatureBasis, text: str, top: int = 5
) -> TextExplanation:
    """The `top` strongest features of `basis` on each token of `text` (read as a context is
    read for the statistics: BOS first, BOS itself not reported), each with its best label."""
    import torch

    from aimri.corpus.contexts import special_tokens
    from aimri.corpus.text import TokenText

    catalog.check_fits(basis, model)
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise AimriError("the text is empty: give at least one token of text to explain")
    bos = special_tokens(model.tokenizer, prepend_bos=True).bos
    acts = model.run(torch.tensor([[bos, *ids]]), read=[basis.site], logits=False).acts
    a = basis.activations(acts[basis.site][0, 1:]).float().cpu()  # [T, F], BOS dropped
    top_vals, top_ids = a.topk(min(top, basis.n_features), dim=-1)
    labels: dict[int, str | None] = {}
    per_token = []
    for vals, feats in zip(top_vals.tolist(), top_ids.tolist(), strict=True):
        row = []
        for v, f in zip(vals, feats, strict=True):
            if v > 0:
                if f not in labels:
                    labels[f] = catalog.best_label(basis.info.name, f)
                row.append(TokenFeature(f, v, labels[f]))
        per_token.append(row)
    return TextExplanation(basis.info.name, TokenText(model.tokenizer)(ids), per_token)


def search(cfg: SearchConfig) -> list[SearchHit]:
    """`aimri search`: the catalog's labels that match `cfg.query`, best first. The query is
    recorded in the run's ledger (`aimri.ledger`; runs/<name>/ for runs/<name>/features/)."""
    with Catalog.open(cfg.catalog) as cat:
        hits = cat.search(cfg.query, cfg.limit)
        sha = cat.identity.model_sha256
    path = Path(cfg.catalog).resolve()
    run = path.parent.parent if path.parent.name == "features" else path.parent
    # The run's own ledger names its catalog relative to the run, so the folder can move.
    detail = {"query": cfg.query, "limit": cfg.limit, "catalog": os.path.relpath(path, run)}
    record_query(run, "search", model_sha256=sha, detail={**detail, "hits": len(hits)})
    return hits


def explain_text_cli(cfg: ExplainTextConfig) -> TextExplanation:
    """`aimri explain-text`: loads the dictionary recorded in the catalog and the model."""
    from aimri.dicts.formats import load_dictionary
    from aimri.features.basis import DictionaryBasis
    from aimri.model.load import load_model

    with Catalog.open(cfg.catalog) as cat:
        ident = cat.identity
        folder = cat.dictionary_folder()
        sha = dictionary_sha256(folder)
        if sha and ident.dictionary_sha256 and sha != ident.dictionary_sha256:
            raise AimriError(
                f"the dictionary at '{folder}' has changed since catalog '{cfg.catalog}' was "
                "built (its weights' sha256 differs): rebuild the catalog"
            )
        basis = DictionaryBasis(load_dictionary(folder))
        return explain_text(cat, load_model(cfg.model), basis, cfg.text, cfg.top)
