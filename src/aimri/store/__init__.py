"""The activation store: sharded safetensors plus a manifest; writer, reader, streaming, and
the analyses that read it directly (site statistics, the logit lens)."""
