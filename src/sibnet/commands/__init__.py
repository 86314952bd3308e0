"""Subcommands of the ``sibnet`` command line, one module each."""
