"""Dataset sources, the common raw schema, and the data expectations."""
