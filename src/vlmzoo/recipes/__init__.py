"""Recipes: whole jobs assembled from the library (the demo, the ``vlmzoo train`` recipe, ablations).

The command line (:mod:`vlmzoo.cli`) parses arguments and calls these; a script can call them too.
"""
