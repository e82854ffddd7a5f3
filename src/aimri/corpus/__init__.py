"""Corpora: documents from a source, tokenized into fixed-length contexts."""
