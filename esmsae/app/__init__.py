"""What the Streamlit pages (``pages/``) call: functions that return DataFrames, figures or HTML.

=====================  ==============================================================
``ui.py``              Streamlit glue: cached resources and the run picker
``runs.py``            the runs the app can open, their index files and structure files
``analyze.py``         the inspector's run of protein LM + SAE on a pasted sequence
``group_upload.py``    the Group comparison page's uploaded groupings and their usage
``groups.py``          group comparison tables from an index's usage rows
``concepts.py``        the inspector's concept columns, the Overview's card and table of what was found
``related.py``         related features within one SAE (decoder cosine)
``render.py``          per-residue tracks, structure viewers (HTML) and plotly figures
``structure_view.py``  which structures show a feature's examples
``columns.py``         readable column names and number formats for every table
``links.py``           links out to UniProt, RCSB PDB and AlphaFold DB
``jobs.py``            background training jobs launched from the Training page
``form_checks.py``     the Training page's checks, run before a job starts
=====================  ==============================================================
"""
