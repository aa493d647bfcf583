"""The file-system layer and what reads and writes through it: inputs into documents, shards out."""
