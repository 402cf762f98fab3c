"""Renderers of plans: text for terminals, markdown for pull requests, JSON for machines."""
