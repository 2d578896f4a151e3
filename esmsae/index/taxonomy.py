"""Kingdoms of proteins: from a taxid of the shared proteomes, a lineage string, or an organism's genus
(the label sets and proteomes name their organisms in different ways)."""
from __future__ import annotations

KINGDOMS = ("Bacteria", "Archaea", "Eukaryota", "Viruses")
# The 17 proteomes shipped in shared/data (NCBI taxid -> superkingdom); FASTA headers carry
# only OS/OX, and no taxonomy database is reachable offline.
PROTEOME_KINGDOM = {
    83333: "Bacteria",
    99287: "Bacteria",
    216597: "Bacteria",
    43989: "Bacteria",
    1111708: "Bacteria",
    103690: "Bacteria",
    1140: "Bacteria",
    174633: "Bacteria",
    243273: "Bacteria",
    36329: "Eukaryota",
    559292: "Eukaryota",
    515849: "Eukaryota",
    759272: "Eukaryota",
    185431: "Eukaryota",
    5851: "Eukaryota",
    5823: "Eukaryota",
    309800: "Archaea",
    547559: "Archaea",
    9606: "Eukaryota",
    10090: "Eukaryota",
    2697049: "Viruses",
    186497: "Archaea",
    272844: "Archaea",
    272561: "Bacteria",  # proteomes_extra: P. furiosus, P. abyssi, C. trachomatis
}

# Genera whose superkingdom is known without a taxonomy database: the shipped proteomes and common
# model organisms, so a FASTA with OS= names but no taxid still gets a kingdom.
GENUS_KINGDOM = {
    g: "Bacteria"
    for g in (
        "Escherichia",
        "Salmonella",
        "Synechocystis",
        "Synechococcus",
        "Nostoc",
        "Anabaena",
        "Cyanothece",
        "Kuenenia",
        "Mycoplasma",
        "Mycoplasmoides",
        "Chlamydia",
        "Bacillus",
        "Staphylococcus",
        "Streptococcus",
        "Pseudomonas",
        "Mycobacterium",
        "Vibrio",
        "Helicobacter",
        "Listeria",
        "Klebsiella",
        "Thermus",
        "Caulobacter",
        "Streptomyces",
        "Clostridium",
        "Clostridioides",
    )
}
GENUS_KINGDOM.update(
    {
        g: "Archaea"
        for g in (
            "Haloferax",
            "Natrialba",
            "Pyrococcus",
            "Thermococcus",
            "Methanocaldococcus",
            "Sulfolobus",
            "Saccharolobus",
            "Halobacterium",
            "Methanosarcina",
            "Archaeoglobus",
            "Nitrosopumilus",
        )
    }
)
GENUS_KINGDOM.update(
    {
        g: "Eukaryota"
        for g in (
            "Saccharomyces",
            "Homo",
            "Mus",
            "Rattus",
            "Plasmodium",
            "Trypanosoma",
            "Podospora",
            "Chaetomium",
            "Arabidopsis",
            "Drosophila",
            "Caenorhabditis",
            "Danio",
            "Bos",
            "Schizosaccharomyces",
            "Xenopus",
            "Gallus",
            "Candida",
            "Neurospora",
            "Dictyostelium",
            "Leishmania",
            "Toxoplasma",
            "Oryza",
            "Zea",
        )
    }
)
GENUS_KINGDOM.update(
    {"Severe": "Viruses", "Human": "Viruses"}
)  # "Severe acute respiratory syndrome coronavirus 2", "Human immunodeficiency virus"


KINGDOM_ALIASES = {"Eukarya": "Eukaryota", "Eukaryotes": "Eukaryota", "Bacteria": "Bacteria", "Archaea": "Archaea",
                   "Eukaryota": "Eukaryota", "Viruses": "Viruses"}


def kingdom_of_lineage(lineage: str) -> str:
    """Superkingdom of a lineage, UniProt style ("Bacteria; Tenericutes; ...") or NCBI full
    style ("cellular organisms; Bacteria; ..."): the first rank that names one."""
    for rank in (lineage or "").replace(",", ";").split(";"):
        k = KINGDOM_ALIASES.get(rank.strip())
        if k:
            return k
    return ""


def kingdom_of(taxid: int | None, lineage: str = "", organism: str = "") -> str:
    k = kingdom_of_lineage(lineage)
    if k:
        return k
    if taxid is not None and taxid in PROTEOME_KINGDOM:
        return PROTEOME_KINGDOM[taxid]
    genus = (organism or "").strip().split(" ")[0]
    return GENUS_KINGDOM.get(genus, "")
