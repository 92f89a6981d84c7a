"""The KV-cache track: what each KV-cache option costs (bytes held per token) and buys, on long contexts.

``methods`` (the registry), ``codecs`` + ``cache`` (methods on transformers' Cache API), ``longctx`` (offline
samples), ``measure`` (one full-precision prefill per sample, every method), ``analysis`` (rows, paired
deltas, findings), ``runner`` (``run_kv``), ``result`` (``KVResult``), ``render`` (console). Heavy modules
(``codecs``, ``cache``, ``measure``) import torch at the top and are imported only where they run.
"""
