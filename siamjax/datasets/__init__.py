"""TFDS builders for signature datasets: one folder each; the example format (`common`), what
the builders of real scans share (`real`) and config -> builder (`registry`)."""
