"""The activation store: LM states streamed to disk (``embed``), and read back for training.

==================  =====================================================================
``activations.py``  the sharded, resumable store: FASTA -> protein LM -> fp16 shards + manifest
``npy.py``          a store from a folder of ``.npy`` arrays (esm-sae's ``--np_dir``)
``loader.py``       shuffled training batches from a bounded window of shards, resumable
==================  =====================================================================
"""
