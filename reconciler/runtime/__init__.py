"""The read-only runtime library: services evaluate flags in-process from a cached snapshot.

It imports nothing from the control plane (no click, jsonschema or deepdiff), so a service can
depend on it alone.
"""
