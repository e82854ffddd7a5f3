"""Models with named sites: loading, layout discovery, reading and patching."""
