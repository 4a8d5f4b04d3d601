"""Where disk bytes come from: one module per source kind behind ``Source``."""
