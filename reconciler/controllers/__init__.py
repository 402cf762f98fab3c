"""Controllers: pure decisions over telemetry (``decide``), each with a thin shell that reads,
writes its state with an audit entry, and alerts. Their state sits above git, below operators."""
