"""embedforge: train small, fast sentence-embedding models through a reproducible pipeline."""

from embedforge.api import load_model

__version__ = "0.1.0"
__all__ = ["load_model"]
