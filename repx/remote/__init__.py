"""Targets over SSH: run and inspect a lab's jobs on another machine (docs/remote.md).

:mod:`.targets` reads ``[targets.NAME]`` of the configuration files, :mod:`.ssh` is the one
transport (the ``ssh`` program), :mod:`.ship` makes repx runnable there and sends the lab's
missing store paths, :mod:`.agent` is the remote half of that, and :mod:`.commands` runs
``repx build`` and the inspecting commands on the remote repx.
"""
