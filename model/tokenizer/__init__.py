"""The bundled code tokenizer's files: a byte-level BPE trained on real source code.

`tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` load with
`loopcoder.schemas.tokens.load_tokenizer()`, which also holds the special tokens, so that reading
them does not import the model package. `loopcoder tokenizer train` rebuilds the files
(`train.py`, docs/tokenizer.md).
"""
