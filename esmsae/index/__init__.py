"""The feature index (DuckDB): one streaming pass of a protein set through protein LM + SAE.

=====================  ==============================================================================
``build.py``           :func:`build_index`, the build as a sequence of phases
``labels.py``          per-residue concepts from the label sets in ../shared/data, one source per label family
``taxonomy.py``        kingdoms of proteins from taxids, lineages and organism names
``splits.py``          train / valid / test sides of labelled proteins (TMbed: its homology partitions)
``proteins.py``        one protein record, grouping / taxonomy file readers, one label per source
``protein_table.py``   the protein set as a columnar table (DuckDB, Parquet): de-duplicated, ranked reads
``protein_groups.py``  grouping files (TSV, JSON, MMseqs2 clusters) into the protein table
``protein_sql.py``     small DuckDB helpers of the protein table
``streaming.py``       bounded-memory accumulators: top-N, reservoir, track spill, CSR, heap trim
``accumulate.py``      what the streaming pass accumulates, per batch
``frames.py``          the index tables as DataFrames, computed from the stream once the pass is over
``concept_counts.py``  the concept pass: per-side counts of features (at each lag), rules and windows
``concept_f1.py``      concept F1 with baselines, choices on valid, report on test, the amino-acid control
``local_rules.py``     hand-written local baselines (hydropathy, amino-acid window, position, K+R, PROSITE)
``window_model.py``    learned baselines: logistic models of the one-hot sequence window (+-10, +-20, left 20)
``bootstrap.py``       bootstrap intervals of F1(feature) - F1(baseline) over test proteins
``describe.py``        grounded one-line feature descriptions and search terms
``verdicts.py``        one rule for every screen: the concept a feature matches, or why it matches none
``search.py``          feature search over what the pages show, ranked by relevance
``group_stats.py``     group enrichment: log odds, CMH / Fisher, Benjamini-Hochberg
``composition.py``     the composition control of group enrichment
``clusters.py``        embedding clusters as a grouping
``label_spans.py``     the ``label_spans`` table drawn under activation tracks
``tables.py``          schema and table writers (no torch: the app's read path imports it)
``write.py``           writing the built index into its DuckDB file
``reader.py``          :class:`FeatureIndex`: every query of the index (the app's read path)
``matches.py``         cross-SAE matches in a side file a rebuild keeps
``reference.py``       reference display statistics written into the SAE checkpoint
``slim.py``            index files rewritten for a committed bundle
=====================  ==============================================================================

Nothing is re-exported: import each name from the module that owns it, so that importing
:mod:`esmsae.index.reader` (the app) does not import the build side (torch).
"""
