"""Plumbing every stage shares: errors, atomic I/O, configs, statistics, plots, cards,
distributed set-up, the training-loop skeleton, experiment helpers, and the names of the
files one stage writes and another reads (``artifacts``)."""
