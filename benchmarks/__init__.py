"""gdis benchmarks: ``python -m benchmarks`` runs every module of this folder and writes one JSON file.

A benchmark is a module here (a name not starting with ``_``) with a function
``run(workdir: pathlib.Path) -> list[dict]`` returning figures built by ``benchmarks._common.figure``
or ``benchmarks._common.skipped``. A module without ``run`` is run as a script
(``python -m benchmarks.<name> --work-dir DIR``) and recorded with its exit status, wall time and output.
"""
