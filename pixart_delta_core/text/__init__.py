"""The text side: captions (prompt cleaning, plain data), the T5 encoder (``t5_config``: its frozen config
and detection, beside ``t5``: the module and its loader), the tokenizer and the encoder that turns prompts
into caption embeddings. May import: checkpoints, quant and the base modules.
"""
