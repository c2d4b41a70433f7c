"""Where the tests find what the repository ships for them."""

from pathlib import Path

#: The published test vectors copied into the repository (see ``tests/vectors/README.md``).
VECTORS = Path(__file__).resolve().parent / "vectors"
