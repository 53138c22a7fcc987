"""Export MegaDetector architectures to full-integer TFLite with a camtrap model card.

Laptop tooling, not part of ``edge_app`` (which never imports it): it needs torch, ultralytics,
the ``yolov5`` package and litert-torch, pinned in ``models/export-requirements.txt``. Run it
as ``python -m models.mdexport`` from the repository root; ``models/README.md`` ("MegaDetector")
has the recipe.
"""
