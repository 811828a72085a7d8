"""Running jobs. :mod:`.build` is the library entry point (``run_build``); it asks
:mod:`.noop_index` or :mod:`.plan` what must run, and a scheduler runs it: the shared
:mod:`.scheduler` (claims, records, gates, scatter-gather) over the units of :mod:`.units`,
with :mod:`.local` or :mod:`.slurm` starting them under the contract of :mod:`.contract`
while :mod:`.progress` shows what happens.
"""
