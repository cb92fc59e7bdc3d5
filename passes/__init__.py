"""The compiler's passes. Importing this package registers every pass by name."""

from cimc.passes import canonicalize, cse, dce, decompose_rnn, form_mvm, map_conductance, place, schedule, tile  # noqa: F401
