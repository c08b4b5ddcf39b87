"""siamjax: Siamese CNNs for offline handwritten signature verification in JAX/Flax."""

__version__ = "0.1.0"
