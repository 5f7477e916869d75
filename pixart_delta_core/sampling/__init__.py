"""Schedules and samplers (pure functions over an explicit schedule), guidance and the ControlNet
schedule. May import: models, text's caption data and the base modules.
"""
