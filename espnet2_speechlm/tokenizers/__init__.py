"""Speech and text tokenizers.

* ``text``: Hugging Face tokenizer directories and sentencepiece BPE.
* ``semantic``: 50 Hz features (MFCC / filterbank, or an ESPnet SSL model
  layer) quantised by k-means (``kmeans``).
* ``melcodec``: the offline acoustic codec (log-mel residual k-means,
  Griffin-Lim decoding); ``espnet_codec``: ESPnet GAN codecs (DAC ...).
* ``speech``: both streams as ``[T, 1 + K]`` local-id frames, saved with a
  ``tokenizer.json``; ``token_io``: the dumped ark/scp format.
* ``audio``: Kaldi data directories, audio reading and resampling.

Nothing here imports espnet at import time; the ESPnet back-ends import it
when a model is loaded.
"""
