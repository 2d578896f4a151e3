"""The built-in demo bundle (``data/demo``).

=============  ===========================================================================
``build.py``   ``python -m esmsae demo``: LM, store, SAE, index, card and matches from ``../shared/data``
``bundle.py``  the committed folder: portable paths, fp16 weights, slimmed index, structures
``report.py``  docs/demo.md, generated from the committed bundle
=============  ===========================================================================
"""
