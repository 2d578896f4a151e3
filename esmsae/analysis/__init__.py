"""Working with a protein LM and an SAE together, above the index.

===============  ===========================================================================
``model.py``     :class:`Model` / :func:`load_model` / :func:`features`: what the Python API exports
``steer.py``     steering along features, with the re-embedding check; generation of designs
``probe.py``     the representation card: linear probes of LM states and SAE codes vs sequence windows
``match.py``     relating the features of two SAEs (decoder cosine, activation correlation)
``external.py``  frozen concept choices scored on a benchmark no choice saw (SignalP fragments)
``protein_concepts.py``  protein-level concepts (SCOP fold classes, TAPE folds, name families) tested per protein
``name_families.py``  protein families by UniProt name, sides by organism, with their classic motifs
``window_max.py``  the protein-level learned window: a one-hot window filter maximised over the protein
===============  ===========================================================================
"""
