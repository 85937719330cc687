"""Llama4Rec's direct (top-k) recommendation (Luo et al., arXiv 2401.13870): pairs for data augmentation, the
most similar user for prompt augmentation, adaptive aggregation, the re-ranking protocol and the instruction
data. Prompts and answers live with the other LLM prompts in `recsys.augment` (pairwise.py, ranking.py)."""
