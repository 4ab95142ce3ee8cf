"""vecflow: versioned, declarative and reversible migrations for vector stores."""

__version__ = "0.1.0"
