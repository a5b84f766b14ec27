"""Shared test set-up: PyTorch at one thread, so that tests behave the same on a busy or a 2-core
machine (small supernets are slower with oversubscribed threads); TVM keeps its own thread pool."""

import torch

torch.set_num_threads(1)

