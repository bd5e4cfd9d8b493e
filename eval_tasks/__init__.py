"""Downstream evaluation of deraining: detection (``detect.py``), segmentation (``segment.py``) and
restoration (``restore.py``), each a script with ``main(argv) -> int``; see ``docs/evaluation.md``."""
