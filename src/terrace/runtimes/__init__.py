"""Runtimes start and stop replicas and report what runs: ``process`` (sandboxed processes)."""
