"""Run by torchrun from tests/test_distributed.py: train from a JSON config, optionally stopping
after N steps (an interruption with its checkpoint written)."""
import json
import sys

from esmsae.config import SAEConfig, TrainConfig
from esmsae.train import train

cfg = json.loads(sys.argv[1])
stop = int(sys.argv[2]) if len(sys.argv) > 2 else None
train(TrainConfig(**cfg["train"]), SAEConfig(**cfg["sae"]), progress=False, stop_after_steps=stop)
