"""The approximation lab's engine: test matrices, method drivers, measurements, the benchmark.

Pure PyTorch, no I/O. It drives the spectral map registry (``engine.spectral``) without
changing it: the matmul-only iterations are stepped here so that every iterate can be
measured, the factorisation-based ones are called with growing iteration caps.
"""
