"""Ground floor of the harmonize stages: typed errors, database access, atomic replace, value parsing."""
