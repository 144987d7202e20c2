"""Worked examples of privacy-gate audits (importable when the repository root is on sys.path)."""
