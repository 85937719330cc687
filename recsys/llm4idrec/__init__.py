"""LLM4IDRec (Chen et al., "Enhancing ID-based Recommendation with Large Language Models", arXiv 2411.02041, TOIS):
fine-tune a language model on user/item ID sequences, let it generate more interactions, filter them and merge them
into the training data of ordinary ID-based recommenders. Official code: newlei/LLM4IDRec (HEAD b24cb5d)."""
