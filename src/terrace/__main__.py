"""``python -m terrace`` is the ``terrace`` command."""

from terrace.cli.main import main

main()
