"""The activation store: sharded safetensors plus a manifest; writer, reader, streaming."""
