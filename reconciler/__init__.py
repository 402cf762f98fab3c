"""GitOps control plane for the feature flags that guard AI features."""

__version__ = "0.1.0"
