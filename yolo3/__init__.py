"""YOLOv3 for edge devices: Darknet files, Keras models, datasets, evaluation.

Importing ``yolo3`` does not import TensorFlow; the modules that need it
(:mod:`yolo3.keras_model`, :mod:`yolo3.models` when loading) import it
themselves through :mod:`yolo3.kerasenv`.
"""

__version__ = "0.1.0"
