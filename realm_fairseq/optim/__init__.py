"""fairseq optimizers of the plugin.

- :mod:`.realm_adam`: ``realm_adam``, fairseq's ``adam`` with the retriever's learning rate set apart from
  the reader's (``--retriever-lr-scale``).
"""
