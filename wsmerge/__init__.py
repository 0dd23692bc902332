"""wsmerge: weight-space model merging with a double-encoder TransformerAE."""
