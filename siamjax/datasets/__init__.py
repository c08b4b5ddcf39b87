"""TFDS builders for signature datasets: one folder each, plus the shared example format."""
