"""One module per verb of ``reconcile``: load, call the core, render, return an exit code."""
