"""Sparse dictionaries: SAEs and transcoders — architectures, training, evaluation, formats."""
