"""The sparse autoencoder: the model, how it is trained and evaluated, and its checkpoint folder.

==================  =====================================================================
``model.py``        :class:`SAE`, one ``nn.Module`` for TopK, BatchTopK, ReLU and JumpReLU
``activations.py``  one activation object per architecture (top-k, batch top-k, ReLU, JumpReLU)
``kernels.py``      the sparse-backward gather, exact row-wise top-k, decoder kernels
``scale.py``        display scales of activations (raw, / max, / max x IDF): one rule for app and API
``optim.py``        the optimisers (Adam, schedule-free sign descent) and the learning-rate rule
``train.py``        the trainer: one SAE per layer from a store, resumable, ``metrics.jsonl``
``evaluate.py``     ``eval.json``: FVU, L0, dead latents, loss recovered against mean ablation
``pipeline.py``     embed -> train -> evaluate, shared by the CLI, the app's jobs and the demo
``checkpoint.py``   the checkpoint folder (``sae.safetensors`` + ``cfg.json``): its one owner
==================  =====================================================================
"""
