"""The benchmark as a library: data sets, methods, scoring and the report, which the scripts
in ``tools/`` (thin mains) share. Run the scripts as ``python tools/X.py``: Python puts
``tools/`` first on ``sys.path``, so ``import benchlib`` needs no path edit."""
