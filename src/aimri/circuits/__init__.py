"""Circuits: how a model reaches an answer, as attribution graphs through transcoders."""
