"""Shared test setup.

The models in the tests are tiny, so intra-op threads buy nothing and, on a shared 2-core machine,
oversubscribed torch threads spin against other processes and slow a 15 s test to minutes. One thread
also makes CPU results independent of the machine's core count.
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch

torch.set_num_threads(1)
