"""Downstream evaluation of deraining, installed as ``jdnet_plugin.eval_tasks``: detection (``detect.py``),
segmentation (``segment.py``), restoration (``restore.py``) and the generalisation report
(``generalization.py``), each importable functions and a script with ``main(argv) -> int``; the protocols are
those of ``../shared/docs/evaluation.md``."""
