"""Fixtures of the in-browser page checks (none yet: each test builds what its page shows)."""
