"""textbook-gen: turn a YAML curriculum into a curated synthetic textbook corpus.

The public API is what ``__all__`` names; everything else is internal.
"""

from textbook_gen.errors import TextbookGenError

__version__ = "0.1.0"
__all__ = ["TextbookGenError", "__version__"]
