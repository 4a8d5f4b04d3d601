"""controllers: API types, stores, reconcilers and the ``diskplane`` command line."""

__all__: list[str] = []
