"""Test doubles of the systems tempo-bridge talks to, and readers of their captured traffic."""
