"""The models: mixers (attention, SSM), blocks that stack them, and the causal LM."""
