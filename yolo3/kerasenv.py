"""Import Keras 2 (tf_keras) the one way this project does it.

TFMOT works only with Keras 2, so ``TF_USE_LEGACY_KERAS=1`` must be set before
TensorFlow is first imported. Import ``keras`` and ``tf`` from here; never
import the plain ``keras`` package. Only modules that need TensorFlow import
this one, so ``import yolo3`` stays free of TensorFlow. TensorFlow's log
lines are silenced unless ``YOLO3_VERBOSE=1``.
"""

from __future__ import annotations

import os

VERBOSE = os.environ.get("YOLO3_VERBOSE") == "1"  # TensorFlow's own log lines back (they drown the progress otherwise)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if VERBOSE else "3")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

if not VERBOSE:  # "compiled metrics have yet to be built", "triggered tf.function retracing": noise for a user
    tf.get_logger().setLevel("ERROR")

__all__ = ["keras", "tf"]
