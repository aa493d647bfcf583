"""Session-wide setup, loaded before any test module.

Without CUDA the Triton kernels run in Triton's interpreter, which must be switched on before the kernels
are first defined. Test modules anywhere in the tree may import the model and with it the kernels during
collection, so the switch is set here, ahead of all of them (tests/kernels/conftest.py keeps its own
safeguard for runs of that folder alone).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
