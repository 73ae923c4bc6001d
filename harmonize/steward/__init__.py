"""Data stewards: profile an unmapped extract, draft its mapping, review unmapped codes, document a mapping."""
