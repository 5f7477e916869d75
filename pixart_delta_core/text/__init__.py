"""The text side: captions (prompt cleaning, plain data), the T5 encoder's config, detection and loading,
the tokenizer and the encoder that turns prompts into caption embeddings. May import: checkpoints,
quant and the base modules.
"""
