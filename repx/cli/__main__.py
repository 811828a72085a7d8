"""``python -m repx.cli``: the same command line as ``repx``."""

from repx.console import main

main()
