"""Verifiable worlds: procedural scenes whose edits have exact targets (no model needed to judge).

This package imports nothing of ours (numpy and Pillow only), so that editors (`policies`) and
judges (`rewards`) can both build on it.
"""
