"""Revision scripts: the pure revision graph (revision.py) and the directory that loads it."""
