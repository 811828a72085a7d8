"""``python -m repx``: the same command line as ``repx``, for when only an interpreter is at
hand (a venv that is not activated, a script running ``sys.executable -m repx``)."""

from repx.console import main

main()
