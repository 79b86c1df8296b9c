"""The only package that imports Lightning and Hydra: entry points at its top (``python -m experiments.train``,
``eval``, ``generate``, ``longeval``, ``fot_eval``, ``compare``, ``run_table``, ``make_table``), each argument
parsing plus one call, and the rooms they call into: ``data/`` (corpora, sources, samplers, tasks),
``training/``, ``evaluation/``, ``tables/``; ``config.py`` and ``cli.py`` are the leaves every room shares."""
