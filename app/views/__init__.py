"""One dashboard page per module; each exposes ``render()``."""
