"""Tests of the typed client, its codec and its command line, against an echoing test server."""
