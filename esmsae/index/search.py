"""Feature search over what the user sees: each feature's label, description and concept text (the
verdict of :mod:`esmsae.index.verdicts`: a concept only where the feature matches it), then the ids and
names of the top examples its page shows (names without UniProt's OS=/OX=/GN= fields). Never the raw
FASTA headers or ids no page shows.

Every query word must occur as a whole word (or a label set's name for it, ``describe.SYNONYMS``);
a query without words finds nothing, and a number also finds the feature with that id, first. Hits are
ranked by relevance (Okapi BM25 through ``rank_bm25``): the primary text weighs three times the example
names, and a multi-word query found as a phrase in the primary text (a matched concept "signal
peptide") ranks above words found apart. DuckDB's full-text-search extension cannot be installed
offline (it is downloaded on first use), hence this small ranker."""
from __future__ import annotations

import numpy as np
import pandas as pd

from esmsae.index.describe import _name, search_terms, term_variants, tokens

TOP_NAMES = 10  # top examples per feature whose ids and names are searched (the page shows them first)
PRIMARY_WEIGHT = 3.0
PHRASE_BONUS = 10.0


def visible_docs(idx, labels: dict[int, str]) -> pd.DataFrame:
    """Per feature: ``primary`` (label, description, concept text) and ``secondary`` (its top examples'
    ids and names), as the browser and the feature page show them."""
    f = idx.q("SELECT feature, description FROM features ORDER BY feature")
    v = idx.verdicts().set_index("feature")
    label = f["feature"].map(labels).fillna(f["feature"].map(v["concept"])).fillna("")
    primary = label + " | " + f["description"].fillna("") + " | " + f["feature"].map(v["verdict"]).fillna("")
    ex = idx.q(
        """SELECT e.feature, p.id, p.description FROM top_examples e JOIN proteins p USING (pidx)
        WHERE e.rank < ? ORDER BY e.feature, e.rank""",
        [TOP_NAMES],
    )
    ex["text"] = ex["id"].fillna("") + " " + ex["description"].fillna("").map(_name)
    secondary = ex.groupby("feature")["text"].agg(" ".join)
    concept = v["concept"]
    return pd.DataFrame({"feature": f["feature"], "primary": primary, "concept": f["feature"].map(concept).fillna(""),
                         "secondary": f["feature"].map(secondary).fillna("")})


def _has_phrase(doc: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return any(doc[i:i + n] == phrase for i in range(len(doc) - n + 1)) if n else False


class Searcher:
    """Built once per index and set of user labels (the app keeps it on the FeatureIndex)."""

    def __init__(self, idx, labels: dict[int, str]):
        from rank_bm25 import BM25Okapi

        docs = visible_docs(idx, labels)
        self.features = docs["feature"].to_numpy()
        self.primary = [tokens(t) for t in docs["primary"]]
        self.secondary = [tokens(t) for t in docs["secondary"]]
        self.concept = [tokens(t) for t in docs["concept"]]  # the matched concept only
        self.both = [set(a) | set(b) for a, b in zip(self.primary, self.secondary)]
        self.bm25_p = BM25Okapi([d or ["_"] for d in self.primary])
        self.bm25_s = BM25Okapi([d or ["_"] for d in self.secondary])

    def _term_hits(self, term: str) -> np.ndarray:
        """[F] whether a query word (or one of its label-set names, matched as a phrase) is in the text."""
        out = np.zeros(len(self.features), bool)
        for v in term_variants(term):
            vt = tokens(v)
            if len(vt) == 1:
                out |= np.fromiter((vt[0] in s for s in self.both), bool, len(self.both))
            elif vt:
                out |= np.fromiter((_has_phrase(p, vt) or _has_phrase(s, vt)
                                    for p, s in zip(self.primary, self.secondary)), bool, len(self.both))
        return out

    def scores(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """([F] hit, [F] relevance) for a query."""
        terms = [w for t in search_terms(query) for w in tokens(t)]
        hit = np.zeros(len(self.features), bool)
        rel = np.zeros(len(self.features))
        if terms:
            hit[:] = True
            for t in terms:
                hit &= self._term_hits(t)
            words = [w for t in terms for v in term_variants(t) for w in tokens(v)]
            rel = PRIMARY_WEIGHT * self.bm25_p.get_scores(words) + self.bm25_s.get_scores(words)
            if len(terms) > 1:
                rel = rel + PHRASE_BONUS * np.fromiter((_has_phrase(p, terms) for p in self.primary), float,
                                                       len(self.primary))
            # the words are the concept the feature matches: above a feature that only mentions them
            rel = rel + 2 * PHRASE_BONUS * np.fromiter(
                (any(_has_phrase(c, tokens(v)) for v in term_variants(" ".join(terms))) or _has_phrase(c, terms)
                 for c in self.concept), float, len(self.concept))
        s = query.strip()
        if s.isdigit() and int(s) in set(self.features.tolist()):  # a feature id: that feature, first
            i = int(np.flatnonzero(self.features == int(s))[0])
            hit[i] = True
            rel[i] = rel.max(initial=0.0) + 1e6
        return hit, rel


def search(idx, df: pd.DataFrame, query: str, labels: dict[int, str]) -> pd.DataFrame:
    """The rows of ``df`` (one per feature) that the query finds, with ``relevance``, best first."""
    key = tuple(sorted(labels.items()))
    cache = getattr(idx, "_searcher", None)
    if cache is None or cache[0] != key:
        cache = (key, Searcher(idx, labels))
        idx._searcher = cache
    hit, rel = cache[1].scores(query)
    pos = np.searchsorted(cache[1].features, df["feature"].to_numpy())
    out = df[hit[pos]].copy()
    out["relevance"] = rel[pos][hit[pos]]
    return out.sort_values(["relevance", "feature"], ascending=[False, True], kind="stable")
