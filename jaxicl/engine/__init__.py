"""The numerical core: scoring (zero-shot and ICL with per-layer records), finetuning (GD and
LCGD), the transforms they are built from, the similarity metrics and batch sizing.

Everything here is a function of params pytrees and arrays; the only files written are the
finetuning cache's (`finetune.cache`).
"""
