"""Plans: what ``reconcile --apply`` will change, computed purely from desired and actual state."""
