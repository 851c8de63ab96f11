"""``python -m yolo3 VERB ...`` is the ``yolo3`` command (the command line lives in :mod:`yolo3_cli`, above this package)."""

from yolo3_cli.main import entry

entry()
