"""Benchmark scripts for cloudsd (see README.md). Not part of the installed package."""
