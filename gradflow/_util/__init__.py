"""Plumbing shared by every layer: argument validation, atomic result files,
progress bars."""
