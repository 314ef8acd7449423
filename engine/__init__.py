"""Pure PyTorch core: specs, optimizers, workloads and the training loop. No I/O."""
