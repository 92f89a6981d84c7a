"""``ptq-deploy run``: the models x schemes x KV-cache matrix, planned, run step by step, resumable."""
