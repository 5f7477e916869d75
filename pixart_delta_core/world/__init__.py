"""The shapes world: a procedural data set of simple scenes with exact captions, and a judge that reads
generated pictures back into the scene's attributes. It trains and tests the embedded demo models.
Imports only the base modules (numpy and PIL do the drawing).
"""
