"""The ``samvolseg`` command line (an application: layer 4 of ``docs/ARCHITECTURE.md``).

``main`` builds the parser and runs the subcommands; ``common`` holds what every subcommand shares (the
``--device`` option and its check, loading a model with a report); ``teach`` registers ``samvolseg teach``.
"""
