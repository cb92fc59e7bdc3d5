"""The compiler's passes, one module each.

:func:`cimc.pass_manager.registered_passes` imports every module named here,
which registers each pass by name. Importing one pass module imports only it
(and what it uses): the importer's ``cimc.passes.dce`` does not bring placement,
activation fusion and their dependencies into ``cimc verify`` or ``cimc import``.
"""

PASS_MODULES = (
    "canonicalize", "cse", "dce", "decompose_rnn", "form_mvm", "fuse_activation", "lift_activation", "map_conductance",
    "place", "ranges", "schedule", "share_weights", "tile",
    "map_defects",
)
