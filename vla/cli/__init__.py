"""The command-line programs: ``vla-train``, ``vla-tune``, ``vla-evaluate``, ``vla-serve`` and
``vla-prepare-data`` (``[project.scripts]``), and ``pipelines/*.py``, the same programs as files
that ``ray job submit`` runs from a checkout."""
