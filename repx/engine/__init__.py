"""Running jobs: what to run (:mod:`.plan`), the work units (:mod:`.units`), the files a job
receives (:mod:`.jobfiles`), the local scheduler (:mod:`.local`) and its display
(:mod:`.progress`). :mod:`repx.build` ties them together for the CLI and for library users.
"""
