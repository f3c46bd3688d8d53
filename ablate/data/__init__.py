"""Data: corpus sources, tokenizers, memmapped token shards, packing, synthetic task generators."""
