"""Group comparison tables from an index's ``group_usage`` rows (:meth:`FeatureIndex.group_usage`):
the most group-specific features, a group's enriched features, two groups side by side, and the
warning shown (page and CLI) when a grouping covers few of the indexed proteins. Pandas only."""
from __future__ import annotations

import pandas as pd


def group_heatmap(usage: pd.DataFrame, n_features: int = 40, value: str = "frac") -> pd.DataFrame:
    """Groups x features matrix of the most group-specific features (largest spread of usage)."""
    if usage.empty:
        return pd.DataFrame()
    m = usage.pivot_table(index="grp", columns="feature", values=value, fill_value=0.0)
    spread = (m.max(0) - m.min(0)).sort_values(ascending=False)
    return m[spread.index[:n_features]]


def coverage_note(grouping: str, covered: int, total: int) -> str:
    """A warning when a grouping covers few of the indexed proteins (empty when it covers most)."""
    if total <= 0 or covered >= 0.5 * total:
        return ""
    if "cluster" in grouping:  # clusters come from the index's own embedding pass, not from a file
        how = ("rebuild the index without --group-sources, so that --cluster-proteins clusters every indexed protein"
               " (the clusters come from the index's own embedding pass, not from a grouping file)")
    elif grouping in ("kingdom", "organism") or grouping.startswith("lineage"):
        how = ("pass --taxonomy (a taxid -> lineage file) or a grouping file (--groups), or give FASTA headers with"
               " OX=taxid / TaxID=; organisms esmsae knows by name are mapped to their kingdom")
    else:
        how = "pass a grouping file that lists more of the indexed proteins (--groups)"
    return (
        f"{total - covered:,} of {total:,} indexed proteins have no {grouping}: only {covered:,} are compared here. To"
        f" cover more, {how}."
    )


def enriched(usage: pd.DataFrame, group: str, n: int = 20, max_q: float = 0.05) -> pd.DataFrame:
    """The group's features with FDR q <= max_q, by effect size (log odds)."""
    df = usage[(usage.grp == group) & (usage.q <= max_q)]
    return df.sort_values("log_odds", ascending=False).head(n).reset_index(drop=True)


def compare(usage: pd.DataFrame, a: str, b: str, n: int = 25) -> pd.DataFrame:
    """Features whose usage differs most between two groups."""
    m = usage[usage.grp.isin([a, b])].pivot_table(index="feature", columns="grp", values="frac", fill_value=0.0)
    for g in (a, b):
        if g not in m:
            m[g] = 0.0
    m = m[[a, b]] if a != b else m[[a]]
    m["difference"] = m[a] - m[b]
    return m.reindex(m["difference"].abs().sort_values(ascending=False).index).head(n).reset_index()


def testability_note(sizes: pd.Series, min_group: int) -> str:
    """A warning when fewer than two groups have ``min_group`` proteins (group -> proteins): enrichment tests a
    group against the rest only from that size, so the page would show a thin heatmap and empty tables."""
    testable = int((sizes >= min_group).sum())
    if testable >= 2:
        return ""
    return (
        f"Only {testable} group{'s' if testable != 1 else ''} here {'has' if testable == 1 else 'have'} at least"
        f" {min_group} proteins ({int(sizes.sum())} proteins in all): enrichment compares groups of at least"
        f" {min_group} proteins against the rest, so nothing can be tested. Add proteins to the groups (ids that"
        " are in this index, or sequences) to compare them."
    )
