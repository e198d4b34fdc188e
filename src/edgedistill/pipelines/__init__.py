"""Whole jobs built from the steps: grids of trainings (``run``), the demo, and their reports."""
