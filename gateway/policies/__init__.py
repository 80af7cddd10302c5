"""Policies: small, replaceable decisions (authority, and later routing, retry, coverage)."""
