"""Faithful fakes of the clouds cloudsd rents from, for tests. Their machines are real containers."""
