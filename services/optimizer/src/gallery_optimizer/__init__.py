"""Model Gallery optimizer: INT8, FP16, pruned and distilled variants of validated models, measured."""
