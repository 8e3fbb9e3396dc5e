"""Released checkpoints of other toolkits, read into this toolkit's model directory.

* ``opuslm``: the OpusLM 1.7B / 7B models released by ESPnet (``model.pth``,
  ``config.yaml``, ``decode_default.yaml``).
* ``shards``: safetensors written tensor by tensor, sharded like Hugging Face.

This package wires the layers together (vocabulary, model, tokenizers, the
inference defaults), as ``bin/`` does; nothing in the core imports it.
"""
