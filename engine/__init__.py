"""Pure PyTorch core: specs, optimizers, workloads and the training loop.

No services (Celery, Redis, DuckDB, Streamlit) and no writes; the one read is a workload's
own dataset (engine/workloads/corpus.py: text files or nanoGPT .bin files named in its
settings, and the bundled data).
"""
