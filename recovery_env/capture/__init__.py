"""Capture: record the layout and write the backup set."""
