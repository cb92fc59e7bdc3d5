"""The compiler's passes. Importing this package registers every pass by name."""

from cimc.passes import (  # noqa: F401
    canonicalize, cse, dce, decompose_rnn, form_mvm, fuse_activation, lift_activation, map_conductance, place, ranges,
    schedule, share_weights, tile,
    map_defects,
)
