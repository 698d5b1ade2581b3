"""embedseg: bottom-up instance segmentation with discriminative pixel embeddings."""
__version__ = "0.1.0"
