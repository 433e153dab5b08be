"""Training pipeline of the TTE package: trace generation, reasoner SFT, contrastive embedder and unified head.

Scripts (`python -m training.<script>` or `accelerate launch -m training.<script>`, from the repository root):
`generate_traces`, `train_reasoner`, `train_embedder` and `train_head`; `export` and `push_to_hub` then package a
trained model for the Hub. Shared modules: `data` (sources, same-source block sampler, collators), `traces` (the
trace store), `losses` (InfoNCE, GradCache, next-token loss), `checkpoint` (atomic save, exact resume) and `loop`
(settings, accelerate setup, the training loop, logging).
"""
