"""Run by torchrun from tests/test_distributed.py: train from a JSON config, optionally stopping
after N steps (an interruption with its checkpoint written)."""
import json
import os
import sys

from esmsae.config import SAEConfig, TrainConfig
from esmsae.sae.train import train

cfg = json.loads(sys.argv[1])
stop = int(sys.argv[2]) if len(sys.argv) > 2 else None
train(TrainConfig(**cfg["train"]), SAEConfig(**cfg["sae"]), progress=False, stop_after_steps=stop)
# as in esmsae/__main__.py: skip interpreter finalisation, where gloo can abort after success
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
