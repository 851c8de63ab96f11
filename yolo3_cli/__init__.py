"""The command line: ``yolo3 VERB ...`` (installed by ``pip install .``), in the manner of git's verbs.

Each verb is one module here with ``HELP`` (one line), ``configure(parser)``
and ``run(args) -> int``; :mod:`yolo3_cli.main` collects them. The top-level
scripts users know (``evaluate.py -p N``, ``clustering.py``, ``convert.py``,
``finetune.py``, ...) are shims onto these verbs with the same flags. This
package is the top of the import graph (``yolo3_cli`` -> ``compression`` ->
``yolo3``): parsing arguments, loading the config, one call into the
library, a table on the terminal and a JSON file for machines.
"""
