"""Evaluation that runs a model (``score/`` only reads files and computes metrics).

* ``text_ability``: text perplexity and multiple-choice log-likelihood of a
  speech LM, compared with the text LLM it was initialised from; speech
  continuation perplexity.
* ``lm_eval_adapter``: the speech LM as a model of EleutherAI's
  lm-evaluation-harness (``python -m espnet2_speechlm.bin.lm_eval``).
"""
