"""The SLURM scheduler: arrays, dependencies, watching, cancelling.

:mod:`.scheduler` submits and watches a build's units, :mod:`.cli` is every SLURM command
repx runs, :mod:`.arrays` the job-id arithmetic, :mod:`.resources` the sbatch options of a
unit, :mod:`.cancel` is ``repx cancel``.
"""
