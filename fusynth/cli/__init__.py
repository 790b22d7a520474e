"""The ``fusynth`` command line: one module per command group, the shared argument
parsing (:mod:`.args`) and what every ``recipes/*.py`` shares (:mod:`.recipe`).

Nothing in the library imports this package; it imports the library. The entry point
is :func:`fusynth.cli.main.main`.
"""
