"""The shipped models, one folder each (see README.md here).

This folder installs as the package `fdn_index_models` (setup.py maps the name onto it), so that
`fdn.shipped_models` finds the same files through importlib.resources in a wheel, an editable
install and a checkout. It holds no code.
"""
