"""Model-selection configurations (the rows of an mst table), without any database.

``configs``: one configuration (model id, compile string, fit string), the keys that say when two are
the same, the checked argument lists of load_model_selection_table and the compile/fit strings written
for generated rows. ``grid``: the search-space dicts of generate_model_configs, grid expansion and random
sampling.
"""
