"""Bridges to other tools (export formats); they import ``models`` only."""
