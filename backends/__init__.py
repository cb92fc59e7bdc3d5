"""Backends that execute compiled programming images (installed as ``cimc.backends``)."""
