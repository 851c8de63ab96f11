"""The one place TensorFlow and Keras 2 are imported.

TFMOT works only with Keras 2, so ``TF_USE_LEGACY_KERAS=1`` must be set before
TensorFlow is first imported. Import ``keras`` and ``tf`` from here; never
import the plain ``keras`` package. Only modules that need TensorFlow import
this one, so ``import yolo3`` stays free of TensorFlow. TensorFlow's log
lines are silenced unless ``YOLO3_VERBOSE=1`` (``--verbose`` on the command line).
"""

from __future__ import annotations

import contextlib
import os
import sys

VERBOSE = os.environ.get("YOLO3_VERBOSE") == "1"  # TensorFlow's own log lines back (they drown the progress otherwise)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if VERBOSE else "3")


@contextlib.contextmanager
def _quiet_native_stderr():
    """Send the C++ side's stderr to /dev/null for a moment.

    Since TensorFlow 2.19 the lines written while it loads (oneDNN, CUDA
    probing, "All log messages before absl::InitializeLog()") ignore
    TF_CPP_MIN_LOG_LEVEL (tensorflow/tensorflow#100442), so the import itself
    runs with file descriptor 2 pointed elsewhere. A Python exception still
    reaches the user: it is printed after the descriptor is restored.
    """
    if VERBOSE:
        yield
        return
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_native_stderr():
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

if not VERBOSE:  # "compiled metrics have yet to be built", "triggered tf.function retracing": noise for a user
    tf.get_logger().setLevel("ERROR")

__all__ = ["keras", "tf"]
