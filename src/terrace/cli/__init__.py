"""The ``terrace`` command line."""
