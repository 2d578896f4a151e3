"""``python -m esmsae``: the command line (:mod:`esmsae.cli`), as the ``esmsae`` console script."""
import os
import sys

from esmsae.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    # under torchrun: the process group is already torn down (esmsae.core.dist) and every output is
    # written; leave without interpreter finalisation, where a gloo worker can abort (SIGABRT)
    # while freeing its resources (pytorch/pytorch PR #179291; seen once in about 20 two-rank test
    # runs here, and 1 in 26 in shared/design/scale_out.md), failing a run that has succeeded
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
sys.exit(code)
