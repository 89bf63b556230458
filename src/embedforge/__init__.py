"""embedforge: train small, fast sentence-embedding models through a reproducible pipeline."""

import os

# On Apple Silicon, an operation the MPS backend lacks runs on the CPU (torch warns once) instead of failing.
# Read when torch starts, so it is set before anything here imports torch.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

from embedforge.api import load_model

__version__ = "0.1.0"
__all__ = ["load_model"]
