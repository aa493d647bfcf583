"""Per-document steps, one contract (`filters.Step`): decoding, quality, AST, hygiene, decontamination."""
