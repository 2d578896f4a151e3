"""Foundations every layer may use (no esmsae imports beyond this package).

=================  ======================================================================
``atomic.py``      atomic writes, and what a failed write (full disk, no permission) tells the user
``fasta.py``       streaming FASTA reading, header metadata, sequence validation, the hash split
``dist.py``        torch.distributed for embed / train / index under torchrun
``paths.py``       where things live: the repository, ``../shared/data``, the app's workspace
``precision.py``   which reduced precisions a device runs natively, and the fp32 fallback
``version.py``     the package version recorded in checkpoints and indexes
=================  ======================================================================
"""
