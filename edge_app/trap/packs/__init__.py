"""Signed model packs on the unit: verify, stage, self-test, switch atomically, roll back.

The maintainer builds and signs a pack with ``camtrap models pack``
(:mod:`edge_app.tools.pack_build`); the unit installs it with ``camtrap models install`` and
undoes it with ``camtrap models rollback``. This side runs on the Pi, so it lives in ``trap``.
"""
