"""Optional integrations of detgroup's grouping heads into other frameworks.

The core package never imports these; each needs its framework
installed (README).
"""
