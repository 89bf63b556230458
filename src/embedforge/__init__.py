"""embedforge: train small, fast sentence-embedding models through a reproducible pipeline."""

__version__ = "0.1.0"
