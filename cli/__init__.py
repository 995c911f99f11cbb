"""The `fdn-index` command line."""
