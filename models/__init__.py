"""Model documentation and laptop tooling (``models.mdexport``); not part of ``edge_app``.

A regular package, not a namespace one, so that ``models`` stays this folder even after the
``yolov5`` package appends its own directory (which has a ``models`` package) to ``sys.path``.
"""
