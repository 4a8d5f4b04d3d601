"""cdi: the import pipeline (source -> safety -> transfer -> decode -> write) and its service."""

__all__: list[str] = []
