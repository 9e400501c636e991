"""The ``ams`` command line: one module per command group, each a thin translation layer."""
