"""``python -m repx.cli``: the same command line as ``repx``."""

from repx.cli import main

main()
