"""Helpers shared by tests: building the testbed image, finding a Docker engine."""
