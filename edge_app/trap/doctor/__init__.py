"""``camtrap doctor``: a unit's self-test, one pass / warn / fail line per part, each with a fix.

Kept cheap to import (the CLI lists it at every start): the checks and their hardware libraries
are imported by :func:`edge_app.trap.doctor.command.main` only when the doctor runs.
"""
