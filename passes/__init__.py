"""The compiler's passes. Importing this package registers every pass by name."""

from cimc.passes import canonicalize, cse, dce  # noqa: F401
