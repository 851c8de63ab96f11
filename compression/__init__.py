"""Model transforms: pruning, clustering, quantization and export (built on :mod:`yolo3`)."""
